//! keel's stand-in for the `getrandom` 0.2 crate (the root Cargo.toml patches it in for every
//! crate of the workspace; only `rand_core` 0.6 depends on getrandom 0.2).
//!
//! Why: tikv's raft 0.7 draws its election timeout from `rand::thread_rng`, which rand 0.8
//! seeds through `rand_core::OsRng`, that is through `getrandom::getrandom`. The real getrandom
//! 0.2 makes the `getrandom` *system call* directly, which madsim cannot see, so a simulated
//! run drew a different election timeout every time and no seed replayed. This crate instead
//! calls libc's `getrandom` *function*. Under `--cfg madsim` the madsim crate defines that
//! symbol (`madsim::rand`), and inside a madsim runtime it fills the buffer from the
//! simulation's seeded RNG (and logs the draw for the determinism check); everywhere else
//! (outside a runtime, or in a build without madsim) the call reaches glibc and the kernel's
//! random source, as before.
//!
//! The API is the part of getrandom 0.2.17 that `rand_core` 0.6.4 uses: [`getrandom`] and
//! [`Error`] (Copy, Eq, [`Error::code`], `From<NonZeroU32>`, Debug, Display, the
//! `INTERNAL_START` and `CUSTOM_START` constants, and with the `std` feature
//! `std::error::Error` and `From<Error> for std::io::Error`), with the same error codes.
//! Linux and Android only: keel's simulator runs there. Kernels older than 3.17 (no getrandom
//! system call) are not supported; the error is then ENOSYS.

use core::fmt;
use core::num::NonZeroU32;

#[cfg(not(any(target_os = "linux", target_os = "android")))]
compile_error!("keel's getrandom shim (sim/shims/getrandom) supports Linux and Android only");

/// Fills `dest` with random bytes: the simulation's under madsim, the kernel's otherwise.
///
/// Retries on EINTR and continues after a short read, so that on success every byte of
/// `dest` was written.
pub fn getrandom(dest: &mut [u8]) -> Result<(), Error> {
    let mut rest = dest;
    while !rest.is_empty() {
        // SAFETY: the pointer and length describe `rest`, a live, writable buffer.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if errno == libc::EINTR {
                continue;
            }
            return Err(Error::from_errno(errno));
        }
        let n = n as usize;
        if n == 0 || n > rest.len() {
            // getrandom(2) returns between 1 and the requested length, or fails.
            return Err(Error::UNEXPECTED);
        }
        rest = &mut rest[n..];
    }
    Ok(())
}

/// A getrandom error: an OS error number, or one of the reserved codes at or above
/// [`Error::INTERNAL_START`] (the same codes as getrandom 0.2).
#[derive(Copy, Clone, Eq, PartialEq)]
pub struct Error(NonZeroU32);

const fn internal_error(n: u16) -> Error {
    match NonZeroU32::new(Error::INTERNAL_START + n as u32) {
        Some(code) => Error(code),
        None => panic!("INTERNAL_START is not zero"),
    }
}

impl Error {
    /// This target/platform is not supported by `getrandom`.
    pub const UNSUPPORTED: Error = internal_error(0);
    /// The platform-specific `errno` returned a non-positive value.
    pub const ERRNO_NOT_POSITIVE: Error = internal_error(1);
    /// Encountered an unexpected situation which should not happen in practice.
    pub const UNEXPECTED: Error = internal_error(2);

    /// Codes below this point are OS errors (positive `errno` values); codes at or above it
    /// but below [`Error::CUSTOM_START`] are reserved for `rand` and `getrandom`.
    pub const INTERNAL_START: u32 = 1 << 31;

    /// Codes at or above this point are free for users' own errors.
    pub const CUSTOM_START: u32 = (1 << 31) + (1 << 30);

    fn from_errno(errno: i32) -> Error {
        match u32::try_from(errno).ok().and_then(NonZeroU32::new) {
            Some(code) => Error(code),
            None => Error::ERRNO_NOT_POSITIVE,
        }
    }

    /// The OS error number, if this error came from the OS.
    #[inline]
    pub fn raw_os_error(self) -> Option<i32> {
        if self.0.get() < Self::INTERNAL_START {
            Some(self.0.get() as i32)
        } else {
            None
        }
    }

    /// The bare error code: an OS error number or a reserved or custom code.
    #[inline]
    pub const fn code(self) -> NonZeroU32 {
        self.0
    }

    fn internal_desc(self) -> Option<&'static str> {
        match self {
            Error::UNSUPPORTED => Some("getrandom: this target is not supported"),
            Error::ERRNO_NOT_POSITIVE => Some("errno: did not return a positive value"),
            Error::UNEXPECTED => Some("unexpected situation"),
            _ => None,
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut dbg = f.debug_struct("Error");
        if let Some(errno) = self.raw_os_error() {
            dbg.field("os_error", &errno);
            dbg.field("description", &std::io::Error::from_raw_os_error(errno));
        } else if let Some(desc) = self.internal_desc() {
            dbg.field("internal_code", &self.0.get());
            dbg.field("description", &desc);
        } else {
            dbg.field("unknown_code", &self.0.get());
        }
        dbg.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(errno) = self.raw_os_error() {
            write!(f, "{}", std::io::Error::from_raw_os_error(errno))
        } else if let Some(desc) = self.internal_desc() {
            f.write_str(desc)
        } else {
            write!(f, "Unknown Error: {}", self.0.get())
        }
    }
}

impl From<NonZeroU32> for Error {
    fn from(code: NonZeroU32) -> Self {
        Error(code)
    }
}

#[cfg(feature = "std")]
impl std::error::Error for Error {}

#[cfg(feature = "std")]
impl From<Error> for std::io::Error {
    fn from(err: Error) -> Self {
        match err.raw_os_error() {
            Some(errno) => std::io::Error::from_raw_os_error(errno),
            None => std::io::Error::other(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_every_byte_of_large_and_empty_buffers() {
        getrandom(&mut []).expect("an empty request succeeds");
        // Larger than one getrandom(2) call returns at once (33554431 bytes): the loop
        // continues after the short read.
        let mut buf = vec![0u8; 40 << 20];
        getrandom(&mut buf).expect("the kernel's random source");
        // Each 4 KiB chunk of 40 MiB of random bytes is all zeros with probability 2^-32768.
        assert!(buf.chunks(4096).all(|c| c.iter().any(|&b| b != 0)));
    }

    #[test]
    fn two_draws_differ() {
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        getrandom(&mut a).unwrap();
        getrandom(&mut b).unwrap();
        assert_ne!(a, b, "real randomness outside the simulator");
    }

    #[test]
    fn error_codes_match_getrandom_0_2() {
        assert_eq!(Error::INTERNAL_START, 0x8000_0000);
        assert_eq!(Error::CUSTOM_START, 0xC000_0000);
        assert_eq!(Error::UNEXPECTED.code().get(), Error::INTERNAL_START + 2);
        let eintr = Error::from_errno(libc::EINTR);
        assert_eq!(eintr.raw_os_error(), Some(libc::EINTR));
        assert_eq!(Error::from_errno(0), Error::ERRNO_NOT_POSITIVE);
        assert_eq!(Error::UNEXPECTED.raw_os_error(), None);
        let custom = Error::from(NonZeroU32::new(Error::CUSTOM_START + 7).unwrap());
        assert_eq!(
            custom.to_string(),
            format!("Unknown Error: {}", Error::CUSTOM_START + 7)
        );
    }
}
