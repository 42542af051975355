#![forbid(unsafe_code)]
//! `start_response`, `write()`, and the rules a response must follow (PEP 3333).
//!
//! The application's status and headers are validated here, in safe Rust, before anything
//! reaches nginx: a status that is not `"NNN reason"`, a header name that is not an HTTP
//! token, a value with CR/LF or other control characters, or text that is not latin-1 raises
//! an exception in the application, which ends as a 500 with the reason in the error log.
//! Nothing invalid is ever forwarded.
//!
//! Ownership: a `Responder` belongs to the driver in `wsgi.rs`, on the thread that runs the
//! application. The `start_response` and `write` callables the application gets hold only the
//! request's id: while the driver runs the application it publishes the responder for that id
//! in a thread-local (`Active`), and the callables find it there. So they may be kept, freed
//! by the garbage collector or called on any thread, at any time: outside their request's own
//! run they raise `RuntimeError`, they never reach a responder that is gone.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

/// What the status line and headers of a response are, ready for nginx.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResponseHead {
    pub status: u16,
    /// The whole status as the application gave it, e.g. `200 OK` (latin-1 bytes).
    pub status_line: Vec<u8>,
    pub content_type: Option<Vec<u8>>,
    pub content_length: Option<u64>,
    /// All other headers, in order, as latin-1 bytes.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    /// The application asked for `Connection: close`.
    pub close: bool,
    /// The body is a regular file (`wsgi.file_wrapper`): nginx may answer ranges of it.
    pub file_body: bool,
}

impl ResponseHead {
    /// Bytes the status line and headers take on the wire (HTTP/1.1 framing).
    pub fn wire_size(&self) -> usize {
        let mut n = 9 + self.status_line.len() + 2;
        if let Some(ct) = &self.content_type {
            n += 14 + ct.len() + 2;
        }
        n + self
            .headers
            .iter()
            .map(|(k, v)| k.len() + 2 + v.len() + 2)
            .sum::<usize>()
    }
}

/// Why the response could not be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkError {
    /// The client went away or the connection failed.
    Closed,
    /// nginx answers the request itself with this status instead of the application's
    /// response (a header filter's verdict, such as 416 for an unsatisfiable range, an
    /// intercepted error page, an `X-Accel-Redirect`): the body is not wanted.
    Answered(u16),
}

/// Where a response goes: nginx's header and body filters (see `output.rs`), or later a
/// channel to the event loop.
pub trait Sink {
    /// Sends the status line and headers. Returns whether a body may follow (false for HEAD,
    /// 1xx, 204 and 304).
    fn start(&mut self, head: &ResponseHead) -> Result<bool, SinkError>;
    /// Sends (and flushes) a piece of the body.
    fn body(&mut self, data: &[u8]) -> Result<(), SinkError>;
    /// True while the client is the slow side: the driver stops pulling the body until the
    /// sink has drained (only a sink on the event loop says so; a thread's sink waits).
    fn paused(&self) -> bool {
        false
    }
    /// The request wants no body whatever the status (HEAD, a header-only subrequest).
    fn no_body(&self) -> bool {
        false
    }
    /// What the application left in `environ["nginx.log_vars"]`, for `$wsgi_log_NAME`.
    fn log_vars(&mut self, _vars: Vec<(String, String)>) {}
    /// Sends `len` bytes of a regular file as the body (nginx reads it, with sendfile).
    fn file(&mut self, file: crate::python::file_wrapper::FileBody) -> Result<(), SinkError>;
    /// `body` of a slice of `owner`, a Python `bytes` object the sink may keep instead of
    /// copying the slice; `batched` when the next piece is already at hand (a list): the sink
    /// may hold it until the next piece or the end, to hand the response over at once.
    fn body_of(
        &mut self,
        data: &[u8],
        _owner: &Bound<'_, PyAny>,
        _batched: bool,
    ) -> Result<(), SinkError> {
        self.body(data)
    }
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Encodes `s` as latin-1, refusing characters above U+00FF.
pub fn latin1(s: &str) -> Option<Vec<u8>> {
    s.chars().map(|c| u8::try_from(u32::from(c)).ok()).collect()
}

/// Checks a status such as `200 OK`: three digits, a space, a reason without control
/// characters. Returns the code.
pub fn parse_status(status: &[u8]) -> Result<u16, String> {
    let shown = String::from_utf8_lossy(status);
    if status.len() < 4 || status[3] != b' ' || !status[..3].iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "invalid status \"{shown}\": it must be a 3-digit code, a space and a reason phrase"
        ));
    }
    let code: u16 = std::str::from_utf8(&status[..3])
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    if code < 100 {
        return Err(format!("invalid status code in \"{shown}\""));
    }
    if status[4..]
        .iter()
        .any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f)
    {
        return Err("invalid status: the reason phrase contains control characters".into());
    }
    Ok(code)
}

/// Checks one header; returns it as latin-1 bytes.
pub fn check_header(name: &str, value: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    if name.is_empty() || !name.bytes().all(is_tchar) {
        return Err(format!("invalid header name {name:?}"));
    }
    let Some(v) = latin1(value) else {
        return Err(format!(
            "header {name:?} has a value that is not latin-1 text: {value:?}"
        ));
    };
    if v.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err(format!(
            "header {name:?} has a value with CR or LF: {value:?}"
        ));
    }
    if v.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err(format!(
            "header {name:?} has a value with control characters: {value:?}"
        ));
    }
    Ok((name.as_bytes().to_vec(), v))
}

/// Hop-by-hop headers belong to the server (PEP 3333): `Connection: close` is honoured by
/// closing the connection after the response, the others are dropped.
fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: &[&[u8]] = &[
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    ];
    HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Builds the head from validated pieces.
pub fn build_head(
    code: u16,
    status_line: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
) -> Result<ResponseHead, String> {
    let mut head = ResponseHead {
        status: code,
        status_line,
        ..Default::default()
    };
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(b"content-type") {
            head.content_type = Some(value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            let text = String::from_utf8_lossy(&value);
            let n: u64 = text
                .trim()
                .parse()
                .map_err(|_| format!("invalid Content-Length header {text:?}"))?;
            if head.content_length.is_some_and(|old| old != n) {
                return Err("conflicting Content-Length headers".into());
            }
            head.content_length = Some(n);
        } else if is_hop_by_hop(&name) {
            if name.eq_ignore_ascii_case(b"connection")
                && value
                    .split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
            {
                head.close = true;
            }
        } else {
            head.headers.push((name, value));
        }
    }
    Ok(head)
}

/// The response state of one request.
pub struct Responder {
    pub head: Option<ResponseHead>,
    pub headers_sent: bool,
    /// False once the sink said the response has no body (HEAD, 204, 304).
    pub body_allowed: bool,
    pub bytes_sent: u64,
    /// Bytes the application produced beyond its Content-Length (cut, not sent).
    pub excess: u64,
    pub client_gone: bool,
    /// The body is over (the iterable is exhausted or failed, `close()` runs): `write()`
    /// raises from here on.
    pub ended: bool,
    /// `wsgi_max_header_size`: a head larger than this is refused (502).
    pub max_header: usize,
    /// Why the head was refused (too big), for the log.
    pub refused: Option<String>,
    /// nginx answers with this status instead (see `SinkError::Answered`).
    pub answered: Option<u16>,
    pub sink: Box<dyn Sink>,
}

impl Responder {
    pub fn new(sink: Box<dyn Sink>, max_header: usize) -> Responder {
        Responder {
            head: None,
            headers_sent: false,
            body_allowed: true,
            bytes_sent: 0,
            excess: 0,
            client_gone: false,
            ended: false,
            max_header,
            refused: None,
            answered: None,
            sink,
        }
    }

    /// Sends the headers if they are not sent yet.
    pub fn send_headers(&mut self) -> PyResult<()> {
        if self.headers_sent {
            return Ok(());
        }
        let Some(head) = self.head.as_ref() else {
            return Err(PyRuntimeError::new_err(
                "the application produced a response before calling start_response()",
            ));
        };
        let size = head.wire_size();
        if size > self.max_header {
            let msg = format!(
                "sent response headers too big: {size} bytes in {} headers, wsgi_max_header_size is {}",
                head.headers.len(),
                self.max_header
            );
            self.refused = Some(msg.clone());
            return Err(PyRuntimeError::new_err(msg));
        }
        self.headers_sent = true;
        match self.sink.start(head) {
            Ok(body) => {
                self.body_allowed = body;
                Ok(())
            }
            Err(SinkError::Closed) => {
                self.client_gone = true;
                Err(client_gone())
            }
            Err(SinkError::Answered(status)) => {
                self.answered = Some(status);
                self.client_gone = true;
                Err(client_gone())
            }
        }
    }

    /// Sends a piece of body, headers first. A body longer than the declared
    /// Content-Length is cut at that length.
    pub fn send_body(&mut self, bytes: &Bound<'_, PyBytes>) -> PyResult<()> {
        self.send_body_as(bytes, false)
    }

    /// `send_body`; `batched` when more of the body is already at hand (see `Sink`).
    pub fn send_body_as(&mut self, bytes: &Bound<'_, PyBytes>, batched: bool) -> PyResult<()> {
        let data = bytes.as_bytes();
        self.send_headers()?;
        if !self.body_allowed || data.is_empty() {
            return Ok(());
        }
        let mut data = data;
        if let Some(cl) = self.head.as_ref().and_then(|h| h.content_length) {
            let room = cl.saturating_sub(self.bytes_sent);
            if (data.len() as u64) > room {
                self.excess += data.len() as u64 - room;
                data = &data[..room as usize];
                if data.is_empty() {
                    return Ok(());
                }
            }
        }
        let sent = self.sink.body_of(data, bytes.as_any(), batched);
        match sent {
            Ok(()) => {
                self.bytes_sent += data.len() as u64;
                Ok(())
            }
            Err(_) => {
                self.client_gone = true;
                Err(client_gone())
            }
        }
    }

    /// Sends a regular file as the whole body: its length is the Content-Length unless the
    /// application gave one (then at most that much is sent).
    pub fn send_file(&mut self, mut file: crate::python::file_wrapper::FileBody) -> PyResult<()> {
        if let Some(head) = self.head.as_mut() {
            match head.content_length {
                Some(cl) if cl < file.len => {
                    self.excess += file.len - cl;
                    file.len = cl;
                }
                Some(_) => {}
                None => head.content_length = Some(file.len),
            }
            head.file_body = true;
        }
        self.send_headers()?;
        if !self.body_allowed || file.len == 0 {
            return Ok(());
        }
        let len = file.len;
        match self.sink.file(file) {
            Ok(()) => {
                self.bytes_sent += len;
                Ok(())
            }
            Err(_) => {
                self.client_gone = true;
                Err(client_gone())
            }
        }
    }

    /// True when fewer bytes were sent than the Content-Length promised.
    pub fn short(&self) -> bool {
        self.body_allowed
            && self
                .head
                .as_ref()
                .and_then(|h| h.content_length)
                .is_some_and(|cl| self.bytes_sent < cl)
    }
}

pub fn client_gone() -> PyErr {
    PyOSError::new_err("client disconnected")
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The request whose application this thread is running now, and its responder.
    static ACTIVE: RefCell<Option<(u64, Rc<RefCell<Responder>>)>> = const { RefCell::new(None) };
}

/// A fresh id for one request's callables.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Publishes `responder` as request `id`'s for as long as the guard lives (the application
/// call, or one resumption of its body).
pub struct Active {
    prev: Option<(u64, Rc<RefCell<Responder>>)>,
}

impl Active {
    pub fn enter(id: u64, responder: &Rc<RefCell<Responder>>) -> Active {
        let prev = ACTIVE.with(|a| a.borrow_mut().replace((id, responder.clone())));
        Active { prev }
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        let prev = self.prev.take();
        ACTIVE.with(|a| *a.borrow_mut() = prev);
    }
}

fn active(id: u64, what: &str) -> PyResult<Rc<RefCell<Responder>>> {
    ACTIVE.with(|a| match a.borrow().as_ref() {
        Some((current, r)) if *current == id => Ok(r.clone()),
        _ => Err(PyRuntimeError::new_err(format!(
            "{what} called after its response ended, or on a thread other than the one running the application"
        ))),
    })
}

/// The `start_response` callable handed to the application.
#[pyclass(module = "ngx_wsgi", name = "StartResponse", frozen)]
pub struct StartResponse {
    pub id: u64,
}

/// The `write` callable that `start_response` returns.
#[pyclass(module = "ngx_wsgi", name = "Write", frozen)]
pub struct Write {
    id: u64,
}

fn type_name(o: &Bound<'_, PyAny>) -> String {
    o.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

fn header_list(headers: &Bound<'_, PyAny>) -> PyResult<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let items: Vec<Bound<'_, PyAny>> = if let Ok(list) = headers.cast::<PyList>() {
        list.iter().collect()
    } else {
        return Err(PyTypeError::new_err(format!(
            "start_response() headers must be a list of (name, value) tuples, not {}",
            type_name(headers)
        )));
    };
    for item in items {
        let Ok(t) = item.cast::<PyTuple>() else {
            return Err(PyTypeError::new_err(format!(
                "start_response() header must be a (name, value) tuple, not {}",
                type_name(&item)
            )));
        };
        if t.len() != 2 {
            return Err(PyTypeError::new_err(
                "start_response() header tuple must have 2 items",
            ));
        }
        let (name, value) = (t.get_item(0)?, t.get_item(1)?);
        let (Ok(name), Ok(value)) = (name.cast::<PyString>(), value.cast::<PyString>()) else {
            return Err(PyTypeError::new_err(format!(
                "start_response() header name and value must be str, not {} and {}",
                type_name(&name),
                type_name(&value)
            )));
        };
        let checked =
            check_header(&name.to_cow()?, &value.to_cow()?).map_err(PyValueError::new_err)?;
        out.push(checked);
    }
    Ok(out)
}

#[pymethods]
impl StartResponse {
    #[pyo3(signature = (status, headers, exc_info=None))]
    fn __call__(
        &self,
        py: Python<'_>,
        status: &Bound<'_, PyAny>,
        headers: &Bound<'_, PyAny>,
        exc_info: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Write> {
        let exc_info = exc_info.filter(|e| !e.is_none());
        let responder = active(self.id, "start_response()")?;
        {
            let r = responder.borrow();
            if let Some(exc_info) = exc_info {
                if r.headers_sent {
                    // Too late to replace the response: re-raise the application's error.
                    let value = exc_info.get_item(1)?;
                    return Err(PyErr::from_value(value));
                }
            } else if r.head.is_some() {
                return Err(PyRuntimeError::new_err(
                    "start_response() called again without exc_info",
                ));
            }
        }
        let Ok(status) = status.cast::<PyString>() else {
            return Err(PyTypeError::new_err(format!(
                "start_response() status must be str, not {}",
                type_name(status)
            )));
        };
        let status_text = status.to_cow()?;
        let status_line = latin1(&status_text).ok_or_else(|| {
            PyValueError::new_err(format!("status {status_text:?} is not latin-1 text"))
        })?;
        let code = parse_status(&status_line).map_err(PyValueError::new_err)?;
        let headers = header_list(headers)?;
        let head = build_head(code, status_line, headers).map_err(PyValueError::new_err)?;
        responder.borrow_mut().head = Some(head);
        let _ = py;
        Ok(Write { id: self.id })
    }
}

#[pymethods]
impl Write {
    fn __call__(&self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let Ok(bytes) = data.cast::<PyBytes>() else {
            return Err(PyTypeError::new_err(format!(
                "write() argument must be bytes, not {}",
                type_name(data)
            )));
        };
        let responder = active(self.id, "write()")?;
        let mut r = responder.borrow_mut();
        if r.ended {
            return Err(PyRuntimeError::new_err(
                "write() called after the response body ended (from close()?)",
            ));
        }
        r.send_body(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(parse_status(b"200 OK"), Ok(200));
        assert_eq!(parse_status(b"404 Not Found"), Ok(404));
        assert_eq!(parse_status(b"599 "), Ok(599));
        assert!(parse_status(b"200").is_err());
        assert!(parse_status(b"200OK").is_err());
        assert!(parse_status(b"2x0 OK").is_err());
        assert!(parse_status(b" 200 OK").is_err());
        assert!(parse_status(b"099 Low").is_err());
        assert!(parse_status(b"200 OK\r\nX: y").is_err());
    }

    #[test]
    fn headers_refuse_crlf_and_non_latin1() {
        assert!(check_header("X-A", "fine value\tand tab").is_ok());
        assert!(check_header("X-A", "a\r\nSet-Cookie: evil").is_err());
        assert!(check_header("X-A", "a\nb").is_err());
        assert!(check_header("X-A", "euro \u{20ac}").is_err());
        assert!(check_header("X A", "v").is_err());
        assert!(check_header("", "v").is_err());
        assert!(check_header("X-A", "nul\0").is_err());
        assert_eq!(check_header("X-A", "caf\u{e9}").unwrap().1, b"caf\xe9");
    }

    #[test]
    fn head_classifies_headers() {
        let h = build_head(
            200,
            b"200 OK".to_vec(),
            vec![
                (b"Content-Type".to_vec(), b"text/plain".to_vec()),
                (b"Content-Length".to_vec(), b"12".to_vec()),
                (b"Connection".to_vec(), b"close".to_vec()),
                (b"Transfer-Encoding".to_vec(), b"chunked".to_vec()),
                (b"X-A".to_vec(), b"1".to_vec()),
            ],
        )
        .unwrap();
        assert_eq!(h.content_type.as_deref(), Some(&b"text/plain"[..]));
        assert_eq!(h.content_length, Some(12));
        assert!(h.close);
        assert_eq!(h.headers, vec![(b"X-A".to_vec(), b"1".to_vec())]);
        assert!(build_head(
            200,
            b"200 OK".to_vec(),
            vec![(b"Content-Length".to_vec(), b"x".to_vec())]
        )
        .is_err());
    }
}
