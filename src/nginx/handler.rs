//! The content handler: read the body, run the application, finalize.
//!
//! The request path has three steps, kept apart so the middle one can move to a Python
//! thread: (1) on the event loop, after nginx has read the whole body, copy what Python
//! needs out of the request (`RequestParts::capture`); (2) call the application
//! (`wsgi::serve`), which only sees owned data and a `Sink`; (3) on the event loop, end the
//! response and finalize the request. The handler returns `NGX_DONE`: the request stays
//! alive (`ngx_http_read_client_request_body` took a reference) until step 3 finalizes it.

use ngx::ffi::{
    ngx_http_finalize_request, ngx_http_read_client_request_body, ngx_http_request_t, ngx_int_t,
    NGX_DONE, NGX_ERROR, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_SPECIAL_RESPONSE,
};
use ngx::http::HttpModuleLocationConf;
use pyo3::prelude::*;

use std::sync::Arc;

use crate::log::{Log, LogWrite};
use crate::nginx::output::{self, NgxSink};
use crate::python::interp::{self, Worker};
use crate::python::parts::RequestParts;
use crate::python::wsgi::{self, Outcome, Step};
use crate::Module;

/// `clcf->handler` of every location with `wsgi_app`.
pub(crate) extern "C" fn wsgi_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live request.
    let log = unsafe { (*(*r).connection).log };
    crate::debug!(log, "wsgi handler");
    // SAFETY: reading the body of a live request; nginx calls `body_read` once it is read,
    // possibly before this call returns, and holds a reference to the request until then.
    let rc = unsafe { ngx_http_read_client_request_body(r, Some(body_read)) };
    if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
        return rc;
    }
    NGX_DONE as ngx_int_t
}

/// Runs once the body has been read; finalizes the request exactly once (here, or later
/// from the bridge when the response continues on a Python thread or waits for the client).
extern "C" fn body_read(r: *mut ngx_http_request_t) {
    let rc = if crate::python::pool::get().is_some() {
        dispatch(r)
    } else if crate::python::pool::threaded() && interp::worker().is_some() {
        // SAFETY: the connection log of the live request.
        let log = unsafe { Log::from_ptr((*(*r).connection).log) };
        log.error("wsgi: no python threads in this worker (see the errors at worker start), request refused with 503");
        Some(ngx::ffi::NGX_HTTP_SERVICE_UNAVAILABLE as ngx_int_t)
    } else {
        serve(r)
    };
    if let Some(rc) = rc {
        // SAFETY: the request is live until this call, which drops the body reader's reference.
        unsafe { ngx_http_finalize_request(r, rc) };
    }
}

/// What the module hands the application: the request, copied out, and the location's
/// settings. `None` (500) when the location or the interpreter is not ready.
fn prepare(r: *mut ngx_http_request_t) -> Option<(&'static Worker, usize, u64, RequestParts)> {
    // SAFETY: a live request, on its event loop thread.
    let req = unsafe { &mut *r };
    let Some(worker) = interp::worker() else {
        // SAFETY: the connection log of the live request.
        let log = unsafe { Log::from_ptr((*req.connection).log) };
        log.error("wsgi: python is not available in this worker (see the errors at worker start)");
        return None;
    };
    let lcf = Module::location_conf(req)?;
    let app = lcf.app?;
    let timeout = lcf.timeout_ms();
    // SAFETY: the body has been read (we are its post handler).
    let parts = unsafe { crate::nginx::request::capture(r) };
    Some((worker, app, timeout, parts))
}

/// Threaded mode: copy the request out and queue it for a Python thread.
fn dispatch(r: *mut ngx_http_request_t) -> Option<ngx_int_t> {
    let Some((worker, app, timeout, parts)) = prepare(r) else {
        return Some(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    };
    let what = format!(
        "{} {}",
        String::from_utf8_lossy(&parts.method),
        String::from_utf8_lossy(&parts.request_uri)
    );
    // SAFETY: a live request on its loop thread.
    // SAFETY: the connection log of the live request.
    let trace =
        unsafe { (*(*(*r).connection).log).log_level } >= crate::log::NGX_LOG_DEBUG as usize;
    // SAFETY: a live request on its loop thread.
    let no_body = unsafe { (*r).header_only() != 0 } || parts.method == b"HEAD";
    let job = crate::python::pool::Job {
        ex: crate::python::exchange::Exchange::new(what),
        parts,
        app,
        no_body,
        trace,
        queued: std::time::Instant::now(),
    };
    // SAFETY: the post handler of a live request on its loop thread.
    unsafe {
        crate::bridge::dispatch(
            r,
            job,
            &worker.apps[app].name,
            timeout as ngx::ffi::ngx_msec_t,
        )
    }
}

/// Inline mode: the application runs here, on the event loop; a body the client cannot take
/// at once continues from write events (`bridge::park`).
fn serve(r: *mut ngx_http_request_t) -> Option<ngx_int_t> {
    let Some((worker, app_index, _, parts)) = prepare(r) else {
        return Some(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    };
    let app = &worker.apps[app_index];
    // SAFETY: the connection log lives as long as the request; `wsgi.errors` is moved off
    // it when the response ends (`Running` detaches it).
    let log = unsafe { Log::from_ptr((*(*r).connection).log) };
    // SAFETY: the sink is used on this thread only, while the request lives: it is dropped
    // when the response ends, here or in the bridge's loop state.
    let sink = Box::new(unsafe { NgxSink::new(r) });
    crate::stats::request_started(0);
    let t0 = std::time::Instant::now();
    let (running, step) =
        Python::attach(|py| wsgi::serve(py, worker, app, parts, sink, Arc::new(log)));
    let app_time = t0.elapsed();
    crate::debug!(log.as_ptr(), "wsgi inline: {step:?} after {app_time:?}");
    let outcome = match (step, running) {
        (Step::Pause, Some(running)) => {
            // SAFETY: the post handler of a live request whose header went out.
            return unsafe { crate::bridge::park(r, running, &app.name, app_time) };
        }
        (Step::Done(outcome), _) => outcome,
        (Step::Pause, None) => Outcome::FailedEarly,
    };
    crate::nginx::recycle::request_done(Some(app_time));
    // SAFETY: the live request, on its thread.
    if let Some(vars) = unsafe { crate::nginx::vars::get_or_make(r) } {
        vars.app_time = Some(app_time);
        vars.queue_time = Some(std::time::Duration::ZERO);
    }
    Some(match outcome {
        // SAFETY: the header was sent for a complete response.
        Outcome::Complete { short } => unsafe { output::finish(r, short) },
        Outcome::FailedEarly => NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
        Outcome::Refused => ngx::ffi::NGX_HTTP_BAD_GATEWAY as ngx_int_t,
        // SAFETY: the post handler of the live request, which nothing was sent for.
        Outcome::Answered(output::REDIRECT) => unsafe { output::redirect(r) },
        Outcome::Answered(status) => status as ngx_int_t,
        Outcome::FailedLate | Outcome::ClientGone => NGX_ERROR as ngx_int_t,
    })
}
