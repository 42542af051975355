//! The content handler: read the body, run the application, finalize.
//!
//! The request path has three steps, kept apart so the middle one can move to a Python
//! thread: (1) on the event loop, after nginx has read the whole body, copy what Python
//! needs out of the request (`RequestParts::capture`); (2) call the application
//! (`wsgi::run`), which only sees owned data and a `Sink`; (3) on the event loop, end the
//! response and finalize the request. The handler returns `NGX_DONE`: the request stays
//! alive (`ngx_http_read_client_request_body` took a reference) until step 3 finalizes it.

use ngx::ffi::{
    ngx_http_finalize_request, ngx_http_read_client_request_body, ngx_http_request_t, ngx_int_t,
    NGX_DONE, NGX_ERROR, NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_SPECIAL_RESPONSE,
};
use ngx::http::HttpModuleLocationConf;
use ngx::ngx_log_debug;
use pyo3::prelude::*;

use crate::interp;
use crate::log::{Log, LogWrite};
use crate::output::{self, NgxSink};
use crate::request::RequestParts;
use crate::wsgi::{self, Outcome};
use crate::Module;

/// `clcf->handler` of every location with `wsgi_app`.
pub extern "C" fn wsgi_handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live request.
    let log = unsafe { (*(*r).connection).log };
    ngx_log_debug!(log, "wsgi handler");
    // SAFETY: reading the body of a live request; nginx calls `body_read` once it is read,
    // possibly before this call returns, and holds a reference to the request until then.
    let rc = unsafe { ngx_http_read_client_request_body(r, Some(body_read)) };
    if rc >= NGX_HTTP_SPECIAL_RESPONSE as ngx_int_t {
        return rc;
    }
    NGX_DONE as ngx_int_t
}

/// Runs once the body has been read; finalizes the request exactly once (here, or later
/// from the bridge when the application runs on a Python thread).
extern "C" fn body_read(r: *mut ngx_http_request_t) {
    let rc = if crate::pool::get().is_some() {
        match dispatch(r) {
            Some(rc) => rc,
            None => return,
        }
    } else {
        serve(r)
    };
    // SAFETY: the request is live until this call, which drops the body reader's reference.
    unsafe { ngx_http_finalize_request(r, rc) };
}

/// Threaded mode: copy the request out and queue it for a Python thread.
fn dispatch(r: *mut ngx_http_request_t) -> Option<ngx_int_t> {
    // SAFETY: a live request, on its event loop thread.
    let req = unsafe { &mut *r };
    let Some(worker) = interp::worker() else {
        return Some(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    };
    let Some(lcf) = Module::location_conf(req) else {
        return Some(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    };
    let Some(app) = lcf.app else {
        return Some(NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t);
    };
    // SAFETY: the body has been read (we are its post handler).
    let parts = unsafe { RequestParts::capture(r) };
    let what = format!(
        "{} {}",
        String::from_utf8_lossy(&parts.method),
        String::from_utf8_lossy(&parts.request_uri)
    );
    let job = crate::pool::Job { ex: crate::exchange::Exchange::new(what), parts, app };
    // SAFETY: the post handler of a live request on its loop thread.
    unsafe {
        crate::bridge::dispatch(r, job, worker.apps[app].name.clone(), lcf.timeout_ms() as ngx::ffi::ngx_msec_t)
    }
}

fn serve(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: a live request, on its event loop thread, for the whole function.
    let req = unsafe { &mut *r };
    // SAFETY: the connection log lives as long as the request; `LogStream::detach` below
    // moves `wsgi.errors` off it before the request ends.
    let log = unsafe { Log::from_ptr((*req.connection).log) };
    let Some(worker) = interp::worker() else {
        log.error("wsgi: python is not available in this worker (see the errors at worker start)");
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    };
    let Some(app_index) = Module::location_conf(req).and_then(|l| l.app) else {
        return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
    };
    let app = &worker.apps[app_index];

    // Step 1: everything Python needs, copied out of the request.
    // SAFETY: the body has been read (we are its post handler).
    let parts = unsafe { RequestParts::capture(r) };

    // Step 2: the application.
    // SAFETY: the sink is used on this thread only and dropped inside `serve`.
    let sink = Box::new(unsafe { NgxSink::new(r) });
    crate::stats::request_started(0);
    let t0 = std::time::Instant::now();
    let outcome = Python::attach(|py| wsgi::serve(py, worker, app, parts, sink, std::sync::Arc::new(log)));
    crate::worker::request_done(Some(t0.elapsed()));
    ngx_log_debug!(log.as_ptr(), "wsgi app done: {:?}", outcome);

    // Step 3: end the response.
    match outcome {
        // SAFETY: the header was sent by `run` for a complete response.
        Outcome::Complete { short } => unsafe { output::finish(r, short) },
        Outcome::FailedEarly => NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
        Outcome::FailedLate | Outcome::ClientGone => NGX_ERROR as ngx_int_t,
    }
}
