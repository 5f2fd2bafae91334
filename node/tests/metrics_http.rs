//! node::metrics::serve: the Prometheus endpoint over a raw TCP stream on 127.0.0.1. Each bad
//! client gets its status line and a closed connection, and the endpoint keeps serving
//! everyone else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use keel_node::metrics::{
    serve_with, HttpLimits, Metrics, Outcome, PartitionStats, CONTENT_TYPE, HTTP_HEAD_BYTES_MAX,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long a test waits for any one answer before failing.
const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// The endpoint's I/O timeout in these tests (short, so the timeout cases run quickly).
const IO_TIMEOUT: Duration = Duration::from_millis(300);

async fn start() -> (SocketAddr, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    metrics.record_request(ApiKey::Produce, Duration::from_millis(2), Outcome::Ok);
    metrics.set_partition_source(Box::new(|| {
        vec![PartitionStats {
            topic: "orders".into(),
            partition: 0,
            log_start_offset: 0,
            log_end_offset: 42,
            high_watermark: 40,
        }]
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let limits = HttpLimits {
        io_timeout: IO_TIMEOUT,
        ..HttpLimits::default()
    };
    tokio::spawn(serve_with(listener, Arc::clone(&metrics), limits));
    (addr, metrics)
}

/// One parsed response.
struct Answer {
    status_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Reads one response (head, then `Content-Length` bytes of body unless `head_only`).
async fn read_answer(stream: &mut TcpStream, head_only: bool) -> Answer {
    let read = async {
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        while !buf.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut byte).await.expect("read head");
            assert_eq!(n, 1, "connection closed inside a response head: {buf:?}");
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf).expect("utf-8 head");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().expect("status line").to_string();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (n, v) = l.split_once(':').expect("header line");
                (n.to_string(), v.trim().to_string())
            })
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .map(|(_, v)| v.parse().expect("content-length"))
            .expect("every response has a content-length");
        let mut body = vec![0u8; if head_only { 0 } else { length }];
        stream.read_exact(&mut body).await.expect("body");
        Answer {
            status_line,
            headers,
            body,
        }
    };
    tokio::time::timeout(ANSWER_WAIT, read)
        .await
        .expect("an answer in time")
}

/// Asserts the server closes `stream` (EOF, or a reset) without sending more.
async fn assert_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(ANSWER_WAIT, stream.read_to_end(&mut rest)).await;
    match read {
        Ok(Ok(_)) => assert!(rest.is_empty(), "bytes after the response: {rest:?}"),
        Ok(Err(_reset)) => {}
        Err(_) => panic!("the server did not close the connection"),
    }
}

async fn send(addr: SocketAddr, request: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    stream
}

async fn assert_serves_metrics(addr: SocketAddr) {
    let mut stream = send(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    let answer = read_answer(&mut stream, false).await;
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
    assert_closed(&mut stream).await;
}

#[tokio::test]
async fn get_metrics_answers_200_with_the_text_format() {
    let (addr, _metrics) = start().await;
    let mut stream = send(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
    .await;
    let answer = read_answer(&mut stream, false).await;
    assert_eq!(answer.status_line, "HTTP/1.1 200 OK");
    assert_eq!(answer.header("Content-Type"), Some(CONTENT_TYPE));
    assert_eq!(answer.header("Connection"), Some("close"));
    let body = String::from_utf8(answer.body).expect("utf-8 body");
    assert!(
        body.contains("keel_requests_total{api=\"Produce\"} 1\n"),
        "{body}"
    );
    assert!(
        body.contains("keel_partition_high_watermark{topic=\"orders\",partition=\"0\"} 40\n"),
        "{body}"
    );
    assert_closed(&mut stream).await;
}

#[tokio::test]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let (addr, metrics) = start().await;
    let mut stream = send(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let first = read_answer(&mut stream, false).await;
    assert_eq!(first.status_line, "HTTP/1.1 200 OK");
    assert_eq!(first.header("Connection"), None);

    metrics.add_bytes_in(7);
    // Two requests in one write (pipelined), the second a HEAD.
    stream
        .write_all(b"GET /metrics?x=1 HTTP/1.1\r\n\r\nHEAD /metrics HTTP/1.1\r\n\r\n")
        .await
        .expect("write");
    let second = read_answer(&mut stream, false).await;
    assert_eq!(second.status_line, "HTTP/1.1 200 OK");
    assert!(String::from_utf8_lossy(&second.body).contains("keel_bytes_in_total 7\n"));
    let head = read_answer(&mut stream, true).await;
    assert_eq!(head.status_line, "HTTP/1.1 200 OK");
    assert_eq!(head.header("Content-Type"), Some(CONTENT_TYPE));
    assert!(head.body.is_empty());

    // HTTP/1.0 closes after one answer unless asked to keep alive.
    let mut old = send(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
    assert_eq!(
        read_answer(&mut old, false).await.status_line,
        "HTTP/1.1 200 OK"
    );
    assert_closed(&mut old).await;
}

#[tokio::test]
async fn other_paths_answer_404_and_other_methods_405() {
    let (addr, _metrics) = start().await;
    let mut stream = send(addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(
        read_answer(&mut stream, false).await.status_line,
        "HTTP/1.1 404 Not Found"
    );
    // The connection stays usable after a 404.
    stream
        .write_all(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        .await
        .expect("write");
    let answer = read_answer(&mut stream, false).await;
    assert_eq!(answer.status_line, "HTTP/1.1 405 Method Not Allowed");
    assert_eq!(answer.header("Allow"), Some("GET, HEAD"));
    stream
        .write_all(b"GET /metricsx HTTP/1.1\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(
        read_answer(&mut stream, false).await.status_line,
        "HTTP/1.1 404 Not Found"
    );
    assert_closed(&mut stream).await;
    assert_serves_metrics(addr).await;
}

#[tokio::test]
async fn garbage_answers_400_and_closes() {
    let (addr, _metrics) = start().await;
    let cases: [&[u8]; 5] = [
        b"hello\r\n\r\n",
        b"GET /metrics HTTP/9.9\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nbad header line\r\n\r\n",
        b"\x00\x00\x00\x10\x00\x12\x00\x03\r\n\r\n",
        b"GET /m\xff HTTP/1.1\r\n\r\n",
    ];
    for request in cases {
        let mut stream = send(addr, request).await;
        let answer = read_answer(&mut stream, false).await;
        assert_eq!(
            answer.status_line, "HTTP/1.1 400 Bad Request",
            "{request:?}"
        );
        assert_eq!(answer.header("Connection"), Some("close"));
        assert_closed(&mut stream).await;
    }
    assert_serves_metrics(addr).await;
}

#[tokio::test]
async fn an_oversized_head_answers_431_and_closes() {
    let (addr, _metrics) = start().await;
    let mut request = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    request.resize(HTTP_HEAD_BYTES_MAX + 1000, b'a');
    request.extend_from_slice(b"\r\n\r\n");
    let mut stream = send(addr, &request).await;
    let answer = read_answer(&mut stream, false).await;
    assert_eq!(
        answer.status_line,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_closed(&mut stream).await;

    // A head that never ends is cut at the bound too, without waiting for the timeout.
    let mut endless = b"GET /metrics HTTP/1.1\r\n".to_vec();
    endless.resize(HTTP_HEAD_BYTES_MAX + 1, b'x');
    let mut stream = send(addr, &endless).await;
    let answer = read_answer(&mut stream, false).await;
    assert_eq!(
        answer.status_line,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    assert_closed(&mut stream).await;
    assert_serves_metrics(addr).await;
}

#[tokio::test]
async fn a_slow_client_gets_408_and_an_idle_one_is_closed() {
    let (addr, _metrics) = start().await;
    let mut slow = send(addr, b"GET /metrics HTTP/1.1\r\nHost:").await;
    let mut idle = TcpStream::connect(addr).await.expect("connect");
    let answer = read_answer(&mut slow, false).await;
    assert_eq!(answer.status_line, "HTTP/1.1 408 Request Timeout");
    assert_closed(&mut slow).await;
    assert_closed(&mut idle).await;
    assert_serves_metrics(addr).await;
}

#[tokio::test]
async fn many_clients_at_once_are_all_served() {
    let (addr, _metrics) = start().await;
    let clients: Vec<_> = (0..20)
        .map(|_| tokio::spawn(assert_serves_metrics(addr)))
        .collect();
    for client in clients {
        client.await.expect("client");
    }
}
