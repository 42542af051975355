//! Calls a WSGI application and drives its response (safe code only).
//!
//! `run` is the whole Python side of a request: environ in, `Outcome` out, the response
//! going to a `Sink` as it is produced. It neither knows nor cares which thread it is on, so
//! the same code runs on the event loop or on a Python thread.
//!
//! PEP 3333 rules kept here: headers go out with the first non-empty body piece (or at the
//! end); an iterable's `close()` is always called, also after errors and disconnects; body
//! pieces must be `bytes`; `start_response` must have been called.

use std::cell::RefCell;
use std::rc::Rc;

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::input::WsgiInput;
use crate::interp::{App, Worker};
use crate::log::{LogStream, LogWrite, NGX_LOG_ERR};
use crate::request::RequestParts;
use crate::response::{Responder, Sink, StartResponse};

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
}

/// `wsgi.file_wrapper`: iterates a file-like object in blocks and closes it.
#[pyclass(module = "ngx_wsgi", name = "FileWrapper")]
pub struct FileWrapper {
    filelike: Py<PyAny>,
    blksize: usize,
}

#[pymethods]
impl FileWrapper {
    #[new]
    #[pyo3(signature = (filelike, blksize=65536))]
    fn new(filelike: Py<PyAny>, blksize: i64) -> FileWrapper {
        FileWrapper { filelike, blksize: if blksize > 0 { blksize as usize } else { 65536 } }
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let data = self.filelike.bind(py).call_method1(pyo3::intern!(py, "read"), (self.blksize,))?;
        let empty = match data.cast::<PyBytes>() {
            Ok(b) => b.as_bytes().is_empty(),
            Err(_) => data.len().map(|n| n == 0).unwrap_or(true),
        };
        Ok(if empty { None } else { Some(data) })
    }

    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let f = self.filelike.bind(py);
        if f.hasattr(pyo3::intern!(py, "close"))? {
            f.call_method0(pyo3::intern!(py, "close"))?;
        }
        Ok(())
    }
}

fn type_name(o: &Bound<'_, PyAny>) -> String {
    o.get_type().name().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}

/// The whole Python side of one request: the application (imported if need be), its
/// environ with `wsgi.input` and `wsgi.errors`, the call and the response into `sink`.
pub fn serve(
    py: Python<'_>,
    worker: &Worker,
    app: &App,
    mut parts: RequestParts,
    sink: Box<dyn Sink>,
    log: std::sync::Arc<dyn LogWrite>,
) -> Outcome {
    let Some(callable) = worker.load(py, app, log.as_ref()) else {
        return Outcome::FailedEarly;
    };
    let body = std::mem::take(&mut parts.body);
    let prepared = (|| -> PyResult<(Bound<'_, PyDict>, Bound<'_, LogStream>)> {
        let input = Bound::new(py, WsgiInput::new(body))?;
        let errors = Bound::new(py, LogStream::new(log.clone(), NGX_LOG_ERR))?;
        let environ = crate::environ::build(
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
            log.exception(py, &format!("wsgi app \"{}\": environ could not be built", app.name), &e);
            return Outcome::FailedEarly;
        }
    };
    let outcome = run(py, &callable, environ, sink, log.as_ref(), &app.name);
    // An application that keeps wsgi.errors past the request writes to the worker's log.
    errors.borrow().detach();
    outcome
}

/// Calls `app(environ, start_response)` and sends its response through `sink`.
/// `log` receives tracebacks; `name` names the application in messages.
pub fn run(py: Python<'_>, app: &Bound<'_, PyAny>, environ: Bound<'_, PyDict>, sink: Box<dyn Sink>, log: &dyn LogWrite, name: &str) -> Outcome {
    let responder = Rc::new(RefCell::new(Responder::new(sink)));
    let start_response = match Bound::new(py, StartResponse { responder: responder.clone() }) {
        Ok(s) => s,
        Err(e) => {
            log.exception(py, &format!("wsgi app \"{name}\" could not be called"), &e);
            return Outcome::FailedEarly;
        }
    };

    let result = match app.call1((environ, start_response)) {
        Ok(r) => r,
        Err(e) => return failed(py, &responder, log, name, &e),
    };

    let iterated = iterate(py, &result, &responder);

    // close() is called whatever happened, except on the plain list/tuple every framework
    // returns for small bodies (they have none, and looking it up would raise internally).
    let closed = if result.is_exact_instance_of::<PyList>() || result.is_exact_instance_of::<PyTuple>() || result.is_exact_instance_of::<PyBytes>() {
        Ok(())
    } else {
        close(py, &result)
    };

    if let Err(e) = iterated {
        if responder.borrow().client_gone {
            if let Err(e) = closed {
                log.exception(py, &format!("wsgi app \"{name}\" close() failed"), &e);
            }
            return Outcome::ClientGone;
        }
        return failed(py, &responder, log, name, &e);
    }
    if let Err(e) = closed {
        // The body has been produced; an error in close() is the application's to fix but
        // the response itself is whole.
        log.exception(py, &format!("wsgi app \"{name}\" close() failed"), &e);
    }

    let mut r = responder.borrow_mut();
    if !r.headers_sent {
        // An empty body: say so, rather than sending an empty chunked body.
        if let Some(head) = r.head.as_mut() {
            if head.content_length.is_none() {
                head.content_length = Some(0);
            }
        }
        if let Err(e) = r.send_headers() {
            drop(r);
            if responder.borrow().client_gone {
                return Outcome::ClientGone;
            }
            return failed(py, &responder, log, name, &e);
        }
    }
    if r.excess > 0 {
        log.error(&format!(
            "wsgi app \"{name}\" sent {} bytes more than its Content-Length, not sent",
            r.excess
        ));
    }
    let short = r.short();
    if short {
        log.error(&format!(
            "wsgi app \"{name}\" sent {} bytes of a Content-Length of {}",
            r.bytes_sent,
            r.head.as_ref().and_then(|h| h.content_length).unwrap_or(0)
        ));
    }
    Outcome::Complete { short }
}

fn failed(py: Python<'_>, responder: &Rc<RefCell<Responder>>, log: &dyn LogWrite, name: &str, e: &PyErr) -> Outcome {
    let r = responder.borrow();
    if r.client_gone {
        return Outcome::ClientGone;
    }
    if r.headers_sent {
        log.exception(py, &format!("wsgi app \"{name}\" failed after the response started, response cut"), e);
        Outcome::FailedLate
    } else {
        log.exception(py, &format!("wsgi app \"{name}\" failed"), e);
        Outcome::FailedEarly
    }
}

/// `in_list`: the item comes from a list or tuple, so the rest of the body is at hand.
fn send_item(responder: &Rc<RefCell<Responder>>, item: &Bound<'_, PyAny>, single: bool, in_list: bool) -> PyResult<()> {
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
    r.send_body_as(data, in_list)
}

fn iterate(py: Python<'_>, result: &Bound<'_, PyAny>, responder: &Rc<RefCell<Responder>>) -> PyResult<()> {
    if let Ok(list) = result.cast_exact::<PyList>() {
        let single = list.len() == 1;
        for item in list.iter() {
            send_item(responder, &item, single, true)?;
            if stop_early(responder) {
                break;
            }
        }
        return Ok(());
    }
    if let Ok(tuple) = result.cast_exact::<PyTuple>() {
        let single = tuple.len() == 1;
        for item in tuple.iter() {
            send_item(responder, &item, single, true)?;
            if stop_early(responder) {
                break;
            }
        }
        return Ok(());
    }
    if result.is_exact_instance_of::<PyBytes>() {
        // A bare bytes object iterates as ints: a common mistake, refused with a clear message.
        return Err(PyTypeError::new_err(
            "the application returned bytes; it must return an iterable of bytes, e.g. [body]",
        ));
    }
    if result.is_instance_of::<pyo3::types::PyString>() {
        return Err(PyTypeError::new_err(
            "the application returned str; it must return an iterable of bytes",
        ));
    }
    let iter = result.try_iter()?;
    for item in iter {
        let item = item?;
        send_item(responder, &item, false, false)?;
        if stop_early(responder) {
            break;
        }
    }
    let _ = py;
    Ok(())
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
