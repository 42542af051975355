//! Waiting for a slow client, as nginx's own `ngx_http_set_write_handler` and
//! `ngx_http_writer` do: a write event delayed by `limit_rate` belongs to the write filter
//! (its timer is left alone), otherwise `send_timeout` watches the connection; on each write
//! event the output nginx holds is flushed, and the caller hears whether it drained.

use core::ptr;

use ngx::ffi::{
    ngx_add_timer, ngx_del_timer, ngx_handle_write_event, ngx_http_output_filter,
    ngx_http_request_t, ngx_int_t, ngx_msec_t, NGX_ERROR,
};
use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};

use crate::nginx::output::output_busy;

/// What a write event found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    /// nginx still holds output: the handler stays armed.
    Waiting,
    /// Everything went out.
    Drained,
    /// `send_timeout` passed with the client not reading.
    TimedOut,
    /// Sending failed (the client is gone).
    Failed,
}

fn send_conf(r: &ngx_http_request_t) -> (usize, ngx_msec_t) {
    NgxHttpCoreModule::location_conf(r)
        .map(|c| (c.send_lowat, c.send_timeout))
        .unwrap_or((0, 60000))
}

/// Arms `r`'s write event for `handler`, as `ngx_http_set_write_handler` does. False when
/// the event could not be registered.
///
/// # Safety
/// `r` is a live request on its event loop thread.
pub unsafe fn wait(
    r: *mut ngx_http_request_t,
    handler: unsafe extern "C" fn(*mut ngx_http_request_t),
) -> bool {
    // SAFETY: the caller's contract: the live request and its connection's write event.
    unsafe {
        let r = &mut *r;
        r.write_event_handler = Some(handler);
        let wev = (*r.connection).write;
        if (*wev).ready() != 0 && (*wev).delayed() != 0 {
            // limit_rate's own timer will fire.
            return true;
        }
        rearm(r)
    }
}

/// `send_timeout` (unless limit_rate delays the event) and the event in the loop.
unsafe fn rearm(r: &mut ngx_http_request_t) -> bool {
    // SAFETY: the caller's live request.
    unsafe {
        let wev = (*r.connection).write;
        let (lowat, send_timeout) = send_conf(r);
        if (*wev).delayed() == 0 {
            ngx_add_timer(wev, send_timeout);
        }
        ngx_handle_write_event(wev, lowat) == 0
    }
}

/// The body of `ngx_http_writer`, for a write event of `r`.
///
/// # Safety
/// `r` is a live request on its event loop thread, called from its write event handler.
pub unsafe fn on_event(r: *mut ngx_http_request_t) -> Drain {
    // SAFETY: the caller's contract.
    unsafe {
        let r = &mut *r;
        let c = r.connection;
        let wev = (*c).write;
        if (*wev).timedout() != 0 {
            (*c).set_timedout(1);
            return Drain::TimedOut;
        }
        if (*wev).delayed() != 0 || r.aio() != 0 {
            // limit_rate (or aio) holds the output back: wait for its own wake-up.
            return if rearm(r) {
                Drain::Waiting
            } else {
                Drain::Failed
            };
        }
        let rc = ngx_http_output_filter(r, ptr::null_mut());
        if rc == NGX_ERROR as ngx_int_t || (*c).error() != 0 {
            return Drain::Failed;
        }
        if output_busy(r) {
            return if rearm(r) {
                Drain::Waiting
            } else {
                Drain::Failed
            };
        }
        if (*wev).timer_set() != 0 && (*wev).delayed() == 0 {
            ngx_del_timer(wev);
        }
        Drain::Drained
    }
}
