//! Fuzz target: the health responder's handling of a request head.
//!
//! The input is what one client sends. It is fed the way the responder's
//! connection loop takes it (reads of at most 2 KiB, the head kept to 8 KiB
//! plus the 4 bytes that can end it), and after each read the head is
//! judged as `Responder::answer_for` judges it: look for the end, refuse a
//! head past the limit, else parse. `answer_for` itself needs a live
//! `Telemetry` and a socket, so its three lines of limits are repeated here
//! around the real `find_head_end` and `parse_head`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost::health::{MAX_HEAD_BYTES, Refusal, Request, find_head_end, parse_head};

/// The responder's read buffer.
const READ: usize = 2048;

fuzz_target!(|data: &[u8]| {
    let mut head: Vec<u8> = Vec::new();
    for chunk in data.chunks(READ) {
        let room = MAX_HEAD_BYTES + 4 - head.len();
        head.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if let Some(verdict) = judge(&head) {
            check(&head, verdict);
            return;
        }
    }
    // The client stopped sending before a verdict: the responder waits for
    // more (and drops the connection at its deadline), so the head must be
    // still unfinished and within the limit.
    assert!(find_head_end(&head).is_none() && head.len() <= MAX_HEAD_BYTES);
});

/// `None` while more bytes are needed, as in `answer_for`.
fn judge(head: &[u8]) -> Option<Result<Request, Refusal>> {
    let end = find_head_end(head);
    if end.is_none() && head.len() <= MAX_HEAD_BYTES {
        return None;
    }
    Some(match end {
        Some(end) if end <= MAX_HEAD_BYTES => parse_head(&head[..end]),
        _ => Err(Refusal::HeadTooLarge),
    })
}

fn check(head: &[u8], verdict: Result<Request, Refusal>) {
    assert!(head.len() <= MAX_HEAD_BYTES + 4);
    match verdict {
        Ok(request) => {
            // `route` matches the path against four pages; anything it gets
            // must already be a bare origin-form path of a GET or HEAD.
            assert!(matches!(request.method.as_str(), "GET" | "HEAD"));
            assert!(request.path.starts_with('/'), "{:?}", request.path);
            assert!(
                !request.path.contains(['?', '#', ' ']),
                "{:?}",
                request.path
            );
        }
        Err(refusal) => check_answer(&refusal.response()),
    }
}

/// A refusal's answer is one well-formed HTTP/1.1 response whose declared
/// length is its body's.
fn check_answer(answer: &[u8]) {
    let text = std::str::from_utf8(answer).expect("answer is UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("answer has a head");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    assert!(status.starts_with("HTTP/1.1 4"), "{status}");
    let length = lines
        .filter_map(|l| l.strip_prefix("Content-Length: "))
        .next()
        .and_then(|n| n.parse::<usize>().ok())
        .expect("Content-Length");
    assert_eq!(length, body.len());
}
