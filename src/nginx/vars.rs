//! The module's variables, for `log_format`, `map`, `add_header`...: `$wsgi_status` (the
//! application's own status, also when an error page or an internal redirect replaced the
//! response), `$wsgi_app_time` and `$wsgi_queue_time` (seconds with millisecond resolution,
//! like `$upstream_response_time`), and `$wsgi_log_NAME` (what the application put in
//! `environ["nginx.log_vars"]["name"]`).
//!
//! The values live in a `Vars` owned by the request pool (a pool cleanup frees it, after the
//! access log ran), found by request in a table of the loop thread's: module contexts are
//! cleared by internal redirects and error pages, the request and its pool are not.

use core::ffi::c_void;
use std::time::Duration;

use ngx::ffi::{
    ngx_conf_t, ngx_http_request_t, ngx_http_variable_value_t, ngx_int_t, ngx_pnalloc,
    ngx_pool_cleanup_add, ngx_str_t, ngx_uint_t, NGX_ERROR, NGX_HTTP_VAR_NOCACHEABLE,
    NGX_HTTP_VAR_PREFIX, NGX_OK,
};

/// What the variables of one request show.
#[derive(Debug, Default)]
pub struct Vars {
    r: usize,
    pub status: Option<u16>,
    pub app_time: Option<Duration>,
    pub queue_time: Option<Duration>,
    pub log: Vec<(String, String)>,
    /// A pending `X-Accel-Redirect` target (see `output::redirect`).
    pub redirect: Option<Vec<u8>>,
}

thread_local! {
    /// `Vars` by request (loop thread only); an entry goes with its request's pool.
    static TABLE: std::cell::RefCell<std::collections::HashMap<usize, *mut Vars>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

unsafe extern "C" fn drop_vars(data: *mut c_void) {
    // SAFETY: the data of our own cleanup entry, a `Box<Vars>` freed once, here.
    let v = unsafe { Box::from_raw(data as *mut Vars) };
    TABLE.with(|t| t.borrow_mut().remove(&v.r));
}

/// The request's `Vars`, if it has some.
///
/// # Safety
/// `r` is a live request on its loop thread; the result is not kept past it.
pub unsafe fn get<'a>(r: *mut ngx_http_request_t) -> Option<&'a mut Vars> {
    let v = TABLE.with(|t| t.borrow().get(&(r as usize)).copied())?;
    // SAFETY: a registered `Vars` lives until its pool cleanup unregisters it.
    Some(unsafe { &mut *v })
}

/// The request's `Vars`, made on first use.
///
/// # Safety
/// As for `get`.
pub unsafe fn get_or_make<'a>(r: *mut ngx_http_request_t) -> Option<&'a mut Vars> {
    // SAFETY: the caller's contract.
    unsafe {
        if let Some(v) = get(r) {
            return Some(v);
        }
        let c = ngx_pool_cleanup_add((*r).pool, 0);
        if c.is_null() {
            return None;
        }
        let v = Box::into_raw(Box::new(Vars {
            r: r as usize,
            ..Default::default()
        }));
        (*c).handler = Some(drop_vars);
        (*c).data = v as *mut c_void;
        TABLE.with(|t| t.borrow_mut().insert(r as usize, v));
        Some(&mut *v)
    }
}

const STATUS: usize = 1;
const APP_TIME: usize = 2;
const QUEUE_TIME: usize = 3;

/// Adds the variables (from `preconfiguration`).
///
/// # Safety
/// `cf` is the configuration being parsed.
pub unsafe fn add(cf: *mut ngx_conf_t) -> bool {
    let vars: [(&'static core::ffi::CStr, usize, u32); 4] = [
        (c"wsgi_status", STATUS, NGX_HTTP_VAR_NOCACHEABLE),
        (c"wsgi_app_time", APP_TIME, NGX_HTTP_VAR_NOCACHEABLE),
        (c"wsgi_queue_time", QUEUE_TIME, NGX_HTTP_VAR_NOCACHEABLE),
        (
            c"wsgi_log_",
            0,
            NGX_HTTP_VAR_NOCACHEABLE | NGX_HTTP_VAR_PREFIX,
        ),
    ];
    for (name, data, flags) in vars {
        let mut s = ngx_str_t {
            len: name.to_bytes().len(),
            data: name.as_ptr() as *mut u8,
        };
        // SAFETY: the caller's parse state; nginx copies nothing it does not own (the name
        // is static).
        let v = unsafe { ngx::ffi::ngx_http_add_variable(cf, &mut s, flags as ngx_uint_t) };
        if v.is_null() {
            return false;
        }
        // SAFETY: the variable nginx just added.
        unsafe {
            (*v).get_handler = Some(get_variable);
            (*v).data = data;
        }
    }
    true
}

fn seconds(d: Duration) -> String {
    let ms = d.as_millis();
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

unsafe extern "C" fn get_variable(
    r: *mut ngx_http_request_t,
    v: *mut ngx_http_variable_value_t,
    data: usize,
) -> ngx_int_t {
    // SAFETY: nginx calls variable handlers with a live request and a value to fill; a
    // prefix variable's `data` is its full name (an `ngx_str_t`).
    unsafe {
        let found = get(r).and_then(|vars| match data {
            STATUS => vars.status.map(|s| s.to_string()),
            APP_TIME => vars.app_time.map(seconds),
            QUEUE_TIME => vars.queue_time.map(seconds),
            name => {
                let name = &*(name as *const ngx_str_t);
                let key = name.as_bytes().get(b"wsgi_log_".len()..)?;
                vars.log
                    .iter()
                    .find(|(k, _)| k.as_bytes().eq_ignore_ascii_case(key))
                    .map(|(_, v)| v.clone())
            }
        });
        let v = &mut *v;
        let Some(text) = found else {
            v.set_not_found(1);
            return NGX_OK as ngx_int_t;
        };
        let p = ngx_pnalloc((*r).pool, text.len().max(1)) as *mut u8;
        if p.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        core::ptr::copy_nonoverlapping(text.as_ptr(), p, text.len());
        v.data = p;
        v.set_len(text.len() as u32);
        v.set_valid(1);
        v.set_no_cacheable(0);
        v.set_not_found(0);
    }
    NGX_OK as ngx_int_t
}
