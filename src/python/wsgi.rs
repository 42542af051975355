#![forbid(unsafe_code)]
//! Calls a WSGI application and drives its response (safe code only).
//!
//! `start` calls the application (environ in, a `Running` response out) and `Running::resume`
//! pulls its body into a `Sink` until the body ends (`Step::Done` with the `Outcome`) or the
//! sink asks for a pause (`Step::Pause`: the client is the slow side; the event loop resumes
//! it when the connection drains). Neither knows which thread it is on: a Python thread runs a
//! request to its end at once (its sink waits instead of pausing), the event loop (inline
//! mode, `wsgi_threads 0`) resumes it from write events.
//!
//! PEP 3333 rules kept here: headers go out with the first non-empty body piece (or at the
//! end); an iterable's `close()` is always called, also after errors and disconnects; body
//! pieces must be `bytes`; `start_response` must have been called.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::log::{LogStream, LogWrite, NGX_LOG_ERR};
use crate::python::input::WsgiInput;
use crate::python::interp::{App, Worker};
use crate::python::parts::RequestParts;
use crate::python::response::{Active, Responder, Sink, StartResponse};

/// How a request ended, for the caller that finalizes it in nginx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response was sent in full (`short`: fewer bytes than its Content-Length).
    Complete { short: bool },
    /// The application failed before anything was sent: answer 500.
    FailedEarly,
    /// The application failed after the headers went out: cut the response.
    FailedLate,
    /// The client went away.
    ClientGone,
    /// The application's response was refused (headers too big): answer 502.
    Refused,
    /// nginx answers the request itself with this status (`SinkError::Answered`).
    Answered(u16),
}

/// What `Running::resume` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The sink is full: resume when it has drained.
    Pause,
    Done(Outcome),
}

fn type_name(o: &Bound<'_, PyAny>) -> String {
    o.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".into())
}

/// The whole Python side of one request, up to its first `Step`: the application (imported
/// if need be), its environ with `wsgi.input` and `wsgi.errors`, the call, and as much of the
/// body as the sink takes.
pub fn serve(
    py: Python<'_>,
    worker: &'static Worker,
    app: &'static App,
    mut parts: RequestParts,
    sink: Box<dyn Sink>,
    log: Arc<dyn LogWrite>,
) -> (Option<Running>, Step) {
    let Some(callable) = worker.load(py, app, log.as_ref()) else {
        return (None, Step::Done(Outcome::FailedEarly));
    };
    let body = std::mem::take(&mut parts.body);
    let prepared = (|| -> PyResult<(Bound<'_, PyDict>, Bound<'_, LogStream>)> {
        let input = Bound::new(py, WsgiInput::new(body))?;
        let errors = Bound::new(py, LogStream::new(log.clone(), NGX_LOG_ERR))?;
        let environ = crate::python::environ::build(
            py,
            worker.base_environ.bind(py),
            &parts,
            input.into_any(),
            errors.clone().into_any(),
        )?;
        Ok((environ, errors))
    })();
    let (environ, errors) = match prepared {
        Ok(p) => p,
        Err(e) => {
            log.exception(
                py,
                &format!("wsgi app \"{}\": environ could not be built", app.name),
                &e,
            );
            return (None, Step::Done(Outcome::FailedEarly));
        }
    };
    let responder = Rc::new(RefCell::new(Responder::new(sink, parts.max_header_size)));
    let mut running = Running {
        id: crate::python::response::next_id(),
        responder,
        result: None,
        body: Body::Done,
        name: &app.name,
        log,
        errors: Some(errors.unbind()),
        log_vars: environ
            .get_item(pyo3::intern!(py, "nginx.log_vars"))
            .ok()
            .flatten()
            .and_then(|d| d.cast_into::<PyDict>().ok())
            .map(Bound::unbind),
    };
    let step = running.call(py, &callable, environ);
    match step {
        Step::Pause => (Some(running), step),
        Step::Done(_) => (None, step),
    }
}

enum Body {
    /// A list or tuple, and the index of its next item.
    Seq(Py<PyAny>, usize),
    Iter(Py<PyAny>),
    Done,
}

/// A response whose body is still being produced.
pub struct Running {
    id: u64,
    responder: Rc<RefCell<Responder>>,
    /// The application's iterable (`close()` is called on it at the end).
    result: Option<Py<PyAny>>,
    body: Body,
    name: &'static str,
    log: Arc<dyn LogWrite>,
    /// `wsgi.errors`, moved to the worker's log when the request ends.
    errors: Option<Py<LogStream>>,
    /// `environ["nginx.log_vars"]`, read when the request ends.
    log_vars: Option<Py<PyDict>>,
}

thread_local! {
    /// The log of the request whose application this thread runs now (`logging` and
    /// `nginx_log` write there, with the request's context).
    static REQUEST_LOG: RefCell<Option<Arc<dyn LogWrite>>> = const { RefCell::new(None) };
}

/// Makes `log` this thread's request log while the guard lives.
struct RequestLog(Option<Arc<dyn LogWrite>>);

impl RequestLog {
    fn enter(log: &Arc<dyn LogWrite>) -> RequestLog {
        RequestLog(REQUEST_LOG.with(|l| l.borrow_mut().replace(log.clone())))
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let prev = self.0.take();
        REQUEST_LOG.with(|l| *l.borrow_mut() = prev);
    }
}

/// `_ngx_wsgi.log(level, message)`: a message for nginx's error log at an nginx level, with
/// the current request's context when there is one.
#[pyfunction]
pub fn log(level: u32, message: &str) {
    let current = REQUEST_LOG.with(|l| l.borrow().clone());
    match current {
        Some(log) => log.write(level, message),
        None => crate::log::Log::cycle().write(level, message),
    }
}

impl Running {
    fn call(&mut self, py: Python<'_>, app: &Bound<'_, PyAny>, environ: Bound<'_, PyDict>) -> Step {
        let _log = RequestLog::enter(&self.log);
        let active = Active::enter(self.id, &self.responder);
        let start_response = match Bound::new(py, StartResponse { id: self.id }) {
            Ok(s) => s,
            Err(e) => {
                self.log.exception(
                    py,
                    &format!("wsgi app \"{}\" could not be called", self.name),
                    &e,
                );
                return self.end(py, Outcome::FailedEarly);
            }
        };
        let result = match app.call1((environ, start_response)) {
            Ok(r) => r,
            Err(e) => {
                let outcome = self.failed(py, &e);
                return self.end(py, outcome);
            }
        };
        if let Ok(wrapper) = result.cast::<crate::python::file_wrapper::FileWrapper>() {
            if let Some(file) = wrapper.borrow().regular_file(py) {
                // The file goes to nginx whole; close() runs now, the thread is free.
                self.result = Some(result.clone().unbind());
                let sent = self.responder.borrow_mut().send_file(file);
                return self.finish(py, sent);
            }
        }
        self.body = if result.is_exact_instance_of::<PyList>()
            || result.is_exact_instance_of::<PyTuple>()
        {
            Body::Seq(result.clone().unbind(), 0)
        } else if result.is_exact_instance_of::<PyBytes>() {
            // A bare bytes object iterates as ints: a common mistake, refused plainly.
            let e = PyTypeError::new_err(
                "the application returned bytes; it must return an iterable of bytes, e.g. [body]",
            );
            self.result = Some(result.unbind());
            return self.finish(py, Err(e));
        } else if result.is_instance_of::<pyo3::types::PyString>() {
            let e = PyTypeError::new_err(
                "the application returned str; it must return an iterable of bytes",
            );
            self.result = Some(result.unbind());
            return self.finish(py, Err(e));
        } else {
            match result.try_iter() {
                Ok(it) => Body::Iter(it.into_any().unbind()),
                Err(e) => {
                    self.result = Some(result.unbind());
                    return self.finish(py, Err(e));
                }
            }
        };
        self.result = Some(result.unbind());
        drop(active);
        self.resume(py)
    }

    /// Pulls the body into the sink until it ends or the sink is full.
    pub fn resume(&mut self, py: Python<'_>) -> Step {
        let _log = RequestLog::enter(&self.log);
        let _active = Active::enter(self.id, &self.responder);
        loop {
            if stop_early(&self.responder) {
                return self.finish(py, Ok(()));
            }
            if self.responder.borrow().sink.paused() {
                return Step::Pause;
            }
            let item = match &mut self.body {
                Body::Seq(seq, i) => {
                    let seq = seq.bind(py);
                    let len = seq.len().unwrap_or(0);
                    if *i >= len {
                        return self.finish(py, Ok(()));
                    }
                    let item = seq.get_item(*i);
                    *i += 1;
                    item.map(|it| (it, Some(len)))
                }
                Body::Iter(it) => match it.bind(py).call_method0(pyo3::intern!(py, "__next__")) {
                    Ok(item) => Ok((item, None)),
                    Err(e) if e.is_instance_of::<pyo3::exceptions::PyStopIteration>(py) => {
                        return self.finish(py, Ok(()));
                    }
                    Err(e) => Err(e),
                },
                Body::Done => return self.finish(py, Ok(())),
            };
            let sent = item.and_then(|(item, seq_len)| {
                let single = seq_len == Some(1);
                send_item(&self.responder, &item, single, seq_len.is_some())
            });
            if let Err(e) = sent {
                return self.finish(py, Err(e));
            }
        }
    }

    /// The client went away while the body was paused: close the iterable and end.
    pub fn abandon(mut self, py: Python<'_>) {
        self.responder.borrow_mut().client_gone = true;
        let _ = self.finish(py, Ok(()));
    }

    /// The body ended (or failed with `err`): `close()`, headers of an empty body, checks.
    fn finish(&mut self, py: Python<'_>, iterated: PyResult<()>) -> Step {
        self.body = Body::Done;
        self.responder.borrow_mut().ended = true;
        let closed = match self.result.take() {
            Some(result) => {
                let result = result.into_bound(py);
                // Plain lists and tuples (what frameworks return for small bodies) have no
                // close(): looking it up would raise internally.
                if result.is_exact_instance_of::<PyList>()
                    || result.is_exact_instance_of::<PyTuple>()
                    || result.is_exact_instance_of::<PyBytes>()
                {
                    Ok(())
                } else {
                    close(py, &result)
                }
            }
            None => Ok(()),
        };
        let name = self.name;
        if let Err(e) = iterated {
            let answered = self.responder.borrow().answered;
            if let Some(status) = answered {
                return self.end(py, Outcome::Answered(status));
            }
            if self.responder.borrow().client_gone {
                if let Err(e) = closed {
                    self.log
                        .exception(py, &format!("wsgi app \"{name}\" close() failed"), &e);
                }
                return self.end(py, Outcome::ClientGone);
            }
            let outcome = self.failed(py, &e);
            return self.end(py, outcome);
        }
        if let Err(e) = closed {
            // The body has been produced; an error in close() is the application's to fix but
            // the response itself is whole.
            self.log
                .exception(py, &format!("wsgi app \"{name}\" close() failed"), &e);
        }
        let answered = self.responder.borrow().answered;
        if let Some(status) = answered {
            return self.end(py, Outcome::Answered(status));
        }
        if self.responder.borrow().client_gone {
            return self.end(py, Outcome::ClientGone);
        }
        let sent = {
            let mut r = self.responder.borrow_mut();
            if !r.headers_sent {
                // An empty body: say so, rather than sending an empty chunked body (a HEAD
                // response keeps what the application said, its body was never produced).
                let head_request = r.sink.no_body();
                if let Some(head) = r.head.as_mut() {
                    if head.content_length.is_none() && !head_request {
                        head.content_length = Some(0);
                    }
                }
                r.send_headers()
            } else {
                Ok(())
            }
        };
        if let Err(e) = sent {
            let answered = self.responder.borrow().answered;
            if let Some(status) = answered {
                return self.end(py, Outcome::Answered(status));
            }
            if self.responder.borrow().client_gone {
                return self.end(py, Outcome::ClientGone);
            }
            let outcome = self.failed(py, &e);
            return self.end(py, outcome);
        }
        let r = self.responder.borrow();
        if r.excess > 0 {
            self.log.error(&format!(
                "wsgi app \"{name}\" sent {} bytes more than its Content-Length, not sent",
                r.excess
            ));
        }
        let short = r.short();
        if short {
            self.log.error(&format!(
                "wsgi app \"{name}\" sent {} bytes of a Content-Length of {}",
                r.bytes_sent,
                r.head.as_ref().and_then(|h| h.content_length).unwrap_or(0)
            ));
        }
        drop(r);
        self.end(py, Outcome::Complete { short })
    }

    fn end(&mut self, py: Python<'_>, outcome: Outcome) -> Step {
        self.body = Body::Done;
        self.responder.borrow_mut().ended = true;
        if let Some(errors) = self.errors.take() {
            // An application that keeps wsgi.errors past the request writes to the worker's log.
            errors.bind(py).borrow().detach();
        }
        if let Some(dict) = self.log_vars.take() {
            let dict = dict.into_bound(py);
            if !dict.is_empty() {
                let vars = dict
                    .iter()
                    .filter_map(|(k, v)| {
                        Some((k.str().ok()?.to_string(), v.str().ok()?.to_string()))
                    })
                    .collect();
                self.responder.borrow_mut().sink.log_vars(vars);
            }
        }
        Step::Done(outcome)
    }

    fn failed(&self, py: Python<'_>, e: &PyErr) -> Outcome {
        let r = self.responder.borrow();
        let name = self.name;
        if let Some(status) = r.answered {
            return Outcome::Answered(status);
        }
        if r.client_gone {
            return Outcome::ClientGone;
        }
        if let Some(why) = &r.refused {
            self.log
                .error(&format!("wsgi app \"{name}\" {why}, answered with 502"));
            return Outcome::Refused;
        }
        if r.headers_sent {
            self.log.exception(
                py,
                &format!("wsgi app \"{name}\" failed after the response started, response cut"),
                e,
            );
            Outcome::FailedLate
        } else {
            self.log
                .exception(py, &format!("wsgi app \"{name}\" failed"), e);
            Outcome::FailedEarly
        }
    }
}

/// Runs a request to its end on this thread (its sink never pauses).
pub fn serve_to_end(
    py: Python<'_>,
    worker: &'static Worker,
    app: &'static App,
    parts: RequestParts,
    sink: Box<dyn Sink>,
    log: Arc<dyn LogWrite>,
) -> Outcome {
    let (mut running, mut step) = serve(py, worker, app, parts, sink, log);
    loop {
        match step {
            Step::Done(outcome) => return outcome,
            Step::Pause => match running.as_mut() {
                Some(r) => step = r.resume(py),
                None => return Outcome::FailedEarly,
            },
        }
    }
}

/// `in_list`: the item comes from a list or tuple, so the rest of the body is at hand.
fn send_item(
    responder: &Rc<RefCell<Responder>>,
    item: &Bound<'_, PyAny>,
    single: bool,
    in_list: bool,
) -> PyResult<()> {
    let Ok(bytes) = item.cast::<PyBytes>() else {
        return Err(PyTypeError::new_err(format!(
            "the response iterable must yield bytes, not {}",
            type_name(item)
        )));
    };
    let data = bytes.as_bytes();
    let mut r = responder.borrow_mut();
    if data.is_empty() && !r.headers_sent {
        // PEP 3333: headers wait for the first non-empty piece.
        return Ok(());
    }
    if single && !r.headers_sent {
        // A one-piece body of known size: send a Content-Length, not a chunked body.
        if let Some(head) = r.head.as_mut() {
            if head.content_length.is_none() {
                head.content_length = Some(data.len() as u64);
            }
        }
    }
    r.send_body_as(bytes, in_list)
}

/// After the headers of a response without a body (HEAD, 204, 304), stop pulling the body.
fn stop_early(responder: &Rc<RefCell<Responder>>) -> bool {
    let r = responder.borrow();
    r.headers_sent && !r.body_allowed
}

fn close(py: Python<'_>, result: &Bound<'_, PyAny>) -> PyResult<()> {
    match result.getattr(pyo3::intern!(py, "close")) {
        Ok(close) => close.call0().map(|_| ()),
        Err(e) if e.is_instance_of::<pyo3::exceptions::PyAttributeError>(py) => Ok(()),
        Err(e) => Err(e),
    }
}
