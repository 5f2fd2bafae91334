//! The broker's high watermark checkpoint writer: one file ([`keel_core::partition::checkpoint`],
//! two slots in the data directory) for every replica's persisted high watermark, written by
//! one writer in rounds. A round takes every partition that asked for a high watermark write
//! ([`keel_core::partition::Effect::WriteHighWatermark`]) since the last round, hands each its
//! [`StateWrite`] (`prepare_state_write`), writes the whole checkpoint with one sync, and only
//! then completes the writes (`complete_state_write`), which exposes the high watermarks and
//! answers the acks=all produces they cover. A fan-out round over a thousand partitions thus
//! costs one sync per broker, where one slot file per partition cost a thousand.
//!
//! The writer is one thread on real disks; under the simulator, one task that waits a simulated
//! sync's latency before each round. Partitions that ask while a round is being written go to
//! the next round.
//!
//! Removing a replica's directory forgets its entry first, durably
//! ([`HwCheckpoint::forget_durably`]): a replica created again in that directory must not read
//! its predecessor's high watermark (recovery would find its empty log below it and count the
//! new replica damaged).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_core::controller::TopicId;
use keel_core::partition::checkpoint::{Checkpoint, CheckpointReport, ReplicaKey};
use keel_core::partition::StateWrite;
use keel_core::storage::StorageError;
use keel_core::Offset;

use super::{sync_state, PartitionHandle};
use crate::storage::Dir;

/// The checkpoint in memory and the data directory it is written to. Every write happens
/// under its lock, so that the two slots alternate.
pub(super) struct HwCheckpoint {
    inner: Mutex<(Checkpoint, Dir)>,
}

impl HwCheckpoint {
    /// Reads the checkpoint from the data directory `root`.
    pub(super) fn open(root: Dir) -> Result<(HwCheckpoint, CheckpointReport), StorageError> {
        let (checkpoint, report) = Checkpoint::read(&root)?;
        Ok((
            HwCheckpoint {
                inner: Mutex::new((checkpoint, root)),
            },
            report,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Checkpoint, Dir)> {
        self.inner.lock().expect("checkpoint lock poisoned")
    }

    /// The high watermark checkpointed for a replica of topic `topic_id`.
    pub(super) fn high_watermark(
        &self,
        topic: &str,
        index: i32,
        topic_id: TopicId,
    ) -> Option<Offset> {
        self.lock()
            .0
            .high_watermark(&(topic.to_owned(), index), &topic_id.to_string())
    }

    /// Drops the entries of `keys` and, if any had one, writes the checkpoint without them
    /// (one write). Call before removing the replicas' directories, and keep them if this
    /// fails.
    pub(super) fn forget_durably(&self, keys: &[ReplicaKey]) -> Result<(), StorageError> {
        let mut guard = self.lock();
        let (checkpoint, root) = &mut *guard;
        let mut forgot = false;
        for key in keys {
            forgot |= checkpoint.forget(key);
        }
        if forgot {
            checkpoint.write_to(root)?;
        }
        Ok(())
    }

    /// One round: the writes of `round`'s partitions, made durable with one write of the
    /// checkpoint, then completed (which exposes their high watermarks). Returns the
    /// partitions whose writes failed, to be queued again after [`RETRY_AFTER_FAILURE`].
    fn write_round(&self, round: Vec<Arc<PartitionHandle>>) -> Vec<Arc<PartitionHandle>> {
        let mut writes: Vec<(Arc<PartitionHandle>, StateWrite)> = Vec::with_capacity(round.len());
        for p in round {
            // Out of the queue before core hands out the write: a write wanted from here on
            // queues the partition for the next round.
            p.sync_state[super::Lane::HighWatermark as usize]
                .store(sync_state::IDLE, Ordering::SeqCst);
            if p.is_deleted() {
                continue;
            }
            if let Some(write) = p.with(|r| r.prepare_state_write()) {
                writes.push((p, write));
            }
        }
        if writes.is_empty() {
            return Vec::new();
        }
        let result = {
            let mut guard = self.lock();
            let (checkpoint, root) = &mut *guard;
            for (p, write) in &writes {
                // A replica being removed has forgotten its entry, or forgets it after this
                // write (its `deleted` flag is set before): it is never written back.
                if !p.is_deleted() {
                    checkpoint.set(
                        (p.topic.clone(), p.index),
                        &p.topic_id.to_string(),
                        write.high_watermark,
                    );
                }
            }
            checkpoint.write_to(root)
        };
        match result {
            Ok(()) => {
                for (p, write) in writes {
                    // A write wanted meanwhile is reported again and queued for the next round.
                    p.with(|r| r.complete_state_write(write));
                    p.drain_effects();
                }
                Vec::new()
            }
            Err(e) => {
                tracing::error!(
                    "writing the high watermark checkpoint ({} partitions): {e}",
                    writes.len()
                );
                // Wanted again at once: core reports it again, and the caller queues the
                // partitions after a pause (a disk that keeps failing would spin), or the
                // next input's effects queue them sooner.
                writes
                    .into_iter()
                    .map(|(p, write)| {
                        p.with(|r| r.fail_state_write(write));
                        p
                    })
                    .collect()
            }
        }
    }
}

/// How long the writer waits after a failed write before it queues its partitions again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(100);

/// Starts the writer: it takes partitions from `rx` in rounds until every sender is gone.
pub(super) fn start_writer(
    checkpoint: Arc<HwCheckpoint>,
    rx: tokio::sync::mpsc::UnboundedReceiver<Arc<PartitionHandle>>,
    #[cfg(madsim)] latency: Duration,
) {
    let mut rx = rx;
    #[cfg(not(madsim))]
    std::thread::Builder::new()
        .name("keel-hw-checkpoint".into())
        .spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut round = vec![first];
                while let Ok(p) = rx.try_recv() {
                    round.push(p);
                }
                let failed = checkpoint.write_round(round);
                if !failed.is_empty() {
                    std::thread::sleep(RETRY_AFTER_FAILURE);
                    failed.iter().for_each(|p| p.drain_effects());
                }
            }
        })
        .expect("spawn the high watermark checkpoint thread");
    #[cfg(madsim)]
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // A simulated sync takes time, as a real one does: partitions that ask meanwhile
            // join this round.
            tokio::time::sleep(latency).await;
            let mut round = vec![first];
            while let Ok(p) = rx.try_recv() {
                round.push(p);
            }
            let failed = checkpoint.write_round(round);
            if !failed.is_empty() {
                tokio::time::sleep(RETRY_AFTER_FAILURE).await;
                failed.iter().for_each(|p| p.drain_effects());
            }
        }
    });
}
