//! The local HTTP responder: `/health`, `/ready`, `/metrics`, `/status`.
//!
//! Hand-rolled on std::net and one `poll(2)` loop in one thread, because the
//! four pages are tiny and the real job is staying up under abuse: every
//! connection has an 8 KiB head limit and a deadline, their number is capped
//! (the oldest unfinished one is dropped to admit a new one, so idle
//! connections cannot lock out a health check), and nothing a client sends
//! can make the agent allocate more than the cap times 8 KiB.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::error::{Error, Result};
use crate::stop::Stop;
use crate::telemetry::{Telemetry, Worker};

pub const MAX_HEAD_BYTES: usize = 8 * 1024;
pub const MAX_CONNECTIONS: usize = 256;
/// Time a client has to send its whole request head and take the answer.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(500);

pub struct Responder {
    listener: TcpListener,
    telemetry: Arc<Telemetry>,
    stop: Stop,
}

struct Connection {
    stream: TcpStream,
    head: Vec<u8>,
    answer: Option<Vec<u8>>,
    written: usize,
    deadline: Instant,
}

impl Responder {
    pub fn bind(addr: SocketAddr, telemetry: Arc<Telemetry>, stop: Stop) -> Result<Responder> {
        let listener = TcpListener::bind(addr).map_err(|e| Error::Internal {
            what: "health responder",
            message: format!("cannot listen on {addr} (OUTPOST_HTTP_ADDR): {e}"),
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::Internal {
                what: "health responder",
                message: e.to_string(),
            })?;
        Ok(Responder {
            listener,
            telemetry,
            stop,
        })
    }

    /// The listening socket a previous program image handed over (section
    /// 4.3), so /health never stops answering across an update. `None`
    /// unless `fd` is a listening TCP socket above the standard descriptors.
    pub fn inherit(fd: i32, telemetry: Arc<Telemetry>, stop: Stop) -> Option<Responder> {
        let socket = crate::supervisor::inherited_fd(fd, nix::sys::stat::SFlag::S_IFSOCK)?;
        let listener = TcpListener::from(socket);
        listener.local_addr().ok()?;
        listener.set_nonblocking(true).ok()?;
        Some(Responder {
            listener,
            telemetry,
            stop,
        })
    }

    /// The listening socket, for a handover.
    pub fn raw_fd(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(&self.listener)
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub fn run(self) {
        let mut connections: Vec<Connection> = Vec::new();
        while !self.stop.is_requested() {
            self.telemetry.progress(Worker::Health, TICK * 10);
            let now = Instant::now();
            let timeout = connections
                .iter()
                .map(|c| c.deadline.saturating_duration_since(now))
                .min()
                .unwrap_or(TICK)
                .min(TICK);
            let ready: Vec<PollFlags> = {
                let mut fds = Vec::with_capacity(connections.len() + 1);
                fds.push(PollFd::new(self.listener.as_fd(), PollFlags::POLLIN));
                for c in &connections {
                    let want = if c.answer.is_some() {
                        PollFlags::POLLOUT
                    } else {
                        PollFlags::POLLIN
                    };
                    fds.push(PollFd::new(c.stream.as_fd(), want));
                }
                let millis = PollTimeout::try_from(timeout.as_millis().max(1) as i32)
                    .unwrap_or(PollTimeout::MAX);
                match poll(&mut fds, millis) {
                    Ok(_) => fds
                        .iter()
                        .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                        .collect(),
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        log::error!("health responder: poll failed: {e}");
                        continue;
                    }
                }
            };
            // Serve existing connections first, then admit new ones, so
            // indices from the poll still match.
            let mut keep = Vec::with_capacity(connections.len());
            // Every /metrics request of one round gets one rendering: a
            // burst of scrapes costs one read of /proc, and a /health
            // behind them does not wait for dozens of renderings.
            let mut metrics_this_round = None;
            for (connection, flags) in connections.drain(..).zip(ready.iter().skip(1)) {
                if let Some(c) = self.advance(connection, *flags, &mut metrics_this_round) {
                    keep.push(c);
                }
            }
            connections = keep;
            if ready[0].contains(PollFlags::POLLIN) {
                self.accept(&mut connections);
            }
            let now = Instant::now();
            connections.retain(|c| c.deadline > now);
        }
        self.telemetry.retire(Worker::Health);
    }

    fn accept(&self, connections: &mut Vec<Connection>) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if connections.len() >= MAX_CONNECTIONS {
                        // Drop the oldest connection that has not finished
                        // its request: a slow client loses, a prober wins.
                        let victim = connections
                            .iter()
                            .enumerate()
                            .filter(|(_, c)| c.answer.is_none())
                            .min_by_key(|(_, c)| c.deadline)
                            .map(|(i, _)| i)
                            .unwrap_or(0);
                        connections.swap_remove(victim);
                        self.telemetry.http_rejected.fetch_add(1, Ordering::Relaxed);
                    }
                    connections.push(Connection {
                        stream,
                        head: Vec::new(),
                        answer: None,
                        written: 0,
                        deadline: Instant::now() + CONNECTION_DEADLINE,
                    });
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: leave the rest in the backlog.
                    log::warn!("health responder: accept failed: {e}");
                    return;
                }
            }
        }
    }

    /// Moves one connection along; `None` once it is finished or broken.
    fn advance(
        &self,
        mut c: Connection,
        flags: PollFlags,
        metrics: &mut Option<String>,
    ) -> Option<Connection> {
        if flags.is_empty() {
            return Some(c);
        }
        if c.answer.is_none() {
            let mut buf = [0u8; 2048];
            loop {
                match c.stream.read(&mut buf) {
                    Ok(0) => return None,
                    Ok(n) => {
                        let room = MAX_HEAD_BYTES + 4 - c.head.len();
                        c.head.extend_from_slice(&buf[..n.min(room)]);
                        if let Some(answer) = self.answer_for(&c.head, metrics) {
                            c.answer = Some(answer);
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return Some(c),
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => return None,
                }
            }
        }
        let answer = c.answer.as_ref()?;
        loop {
            match c.stream.write(&answer[c.written..]) {
                Ok(0) => return None,
                Ok(n) => {
                    c.written += n;
                    if c.written == answer.len() {
                        let _ = c.stream.shutdown(std::net::Shutdown::Write);
                        return None;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Some(c),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return None,
            }
        }
    }

    /// The full answer once `head` holds a whole request head (or proves it
    /// never will); `None` while more bytes are needed.
    fn answer_for(&self, head: &[u8], metrics: &mut Option<String>) -> Option<Vec<u8>> {
        let end = find_head_end(head);
        if end.is_none() && head.len() <= MAX_HEAD_BYTES {
            return None;
        }
        self.telemetry.http_requests.fetch_add(1, Ordering::Relaxed);
        let request = match end {
            Some(end) if end <= MAX_HEAD_BYTES => parse_head(&head[..end]),
            _ => Err(Refusal::HeadTooLarge),
        };
        Some(match request {
            Ok(request) => self.route(&request, metrics),
            Err(refusal) => refusal.response(),
        })
    }

    fn route(&self, request: &Request, metrics: &mut Option<String>) -> Vec<u8> {
        let page = match request.path.as_str() {
            "/health" => Some((200, "application/json", self.telemetry.health_json())),
            "/ready" => {
                let (code, body) = if self.telemetry.ready() {
                    (200, "ready\n")
                } else {
                    (503, "not ready: not yet registered with the manager\n")
                };
                Some((code, "text/plain; charset=utf-8", body.to_string()))
            }
            "/metrics" => Some((
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics
                    .get_or_insert_with(|| self.telemetry.render_metrics())
                    .clone(),
            )),
            "/status" => Some((200, "application/json", self.telemetry.status_json())),
            _ => None,
        };
        match page {
            Some((code, content_type, body)) => {
                response(code, content_type, &body, request.method == "HEAD", &[])
            }
            None => Refusal::NotFound.response(),
        }
    }
}

/// A request head the responder serves. Public for the fuzz target only.
#[doc(hidden)]
pub struct Request {
    pub method: String,
    pub path: String,
}

/// Why a request head gets no page. Public for the fuzz target only.
#[doc(hidden)]
#[derive(Debug, PartialEq)]
pub enum Refusal {
    BadRequest(&'static str),
    NotFound,
    MethodNotAllowed,
    HeadTooLarge,
}

impl Refusal {
    /// The whole HTTP answer; public for the fuzz target only.
    #[doc(hidden)]
    pub fn response(&self) -> Vec<u8> {
        let (code, text, extra): (u16, &str, &[(&str, &str)]) = match self {
            Refusal::BadRequest(why) => (400, why, &[]),
            Refusal::NotFound => (
                404,
                "not found: try /health, /ready, /metrics or /status",
                &[],
            ),
            Refusal::MethodNotAllowed => (405, "only GET is served", &[("Allow", "GET, HEAD")]),
            Refusal::HeadTooLarge => (431, "request head larger than 8 KiB", &[]),
        };
        response(
            code,
            "text/plain; charset=utf-8",
            &format!("{text}\n"),
            false,
            extra,
        )
    }
}

/// Where the request head ends; public for the fuzz target only.
#[doc(hidden)]
pub fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Parses one whole request head; public for the fuzz target only.
#[doc(hidden)]
pub fn parse_head(head: &[u8]) -> Result<Request, Refusal> {
    let text =
        std::str::from_utf8(head).map_err(|_| Refusal::BadRequest("request head is not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::BadRequest("malformed request line"));
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Err(Refusal::BadRequest("malformed request line"));
    }
    if !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(Refusal::BadRequest("malformed method"));
    }
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Refusal::BadRequest("malformed header line"));
        };
        let name = name.trim().to_ascii_lowercase();
        let has_body =
            (name == "content-length" && value.trim() != "0") || name == "transfer-encoding";
        if has_body && matches!(method, "GET" | "HEAD") {
            return Err(Refusal::BadRequest("request bodies are not accepted"));
        }
    }
    if method != "GET" && method != "HEAD" {
        return Err(Refusal::MethodNotAllowed);
    }
    let path = target.split(['?', '#']).next().unwrap_or(target);
    Ok(Request {
        method: method.to_string(),
        path: path.to_string(),
    })
}

fn response(
    code: u16,
    content_type: &str,
    body: &str,
    head_only: bool,
    extra: &[(&str, &str)],
) -> Vec<u8> {
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_plain_get() {
        let r = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!((r.method.as_str(), r.path.as_str()), ("GET", "/metrics"));
    }

    #[test]
    fn refuses_what_it_must() {
        assert_eq!(
            parse_head(b"POST /health HTTP/1.1\r\n\r\n").err(),
            Some(Refusal::MethodNotAllowed)
        );
        assert_eq!(
            parse_head(b"GET /health HTTP/1.1\r\nContent-Length: 5\r\n\r\n").err(),
            Some(Refusal::BadRequest("request bodies are not accepted"))
        );
        assert!(matches!(
            parse_head(b"\x00\x01 x\r\n\r\n"),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            parse_head(b"GET health HTTP/1.1\r\n\r\n"),
            Err(Refusal::BadRequest(_))
        ));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1 extra\r\n\r\n"),
            Err(Refusal::BadRequest(_))
        ));
    }

    #[test]
    fn head_end_is_found() {
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
