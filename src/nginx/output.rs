//! Writes a response into nginx: `headers_out`, the header filter chain, and body buffers
//! through the body filter chain.
//!
//! Ownership: body buffers come from the request pool, through nginx's own chain helpers
//! (`ngx_chain_get_free_buf` / `ngx_chain_update_chains`, tagged with the module): once nginx
//! has sent a buffer it returns to the free list with its memory, and the next piece that fits
//! reuses it, so a long stream does not grow the pool by its length. Long pieces from a
//! Python thread are not copied: the buffer points into the application's own `bytes`
//! (`Chunk::Shared`, marked `memory`: read-only), whose reference the request keeps in its
//! pool (`Held`) until nginx has sent the buffer (its size is 0 again), then drops.

use core::ffi::c_void;
use core::ptr;

use ngx::ffi::{
    ngx_buf_tag_t, ngx_chain_get_free_buf, ngx_chain_t, ngx_chain_update_chains,
    ngx_http_output_filter, ngx_http_request_t, ngx_http_send_header, ngx_http_send_special,
    ngx_int_t, ngx_list_push, ngx_palloc, ngx_parse_http_time, ngx_pfree, ngx_pnalloc, ngx_str_t,
    ngx_table_elt_t, ngx_uint_t, NGX_ERROR, NGX_HTTP_LAST, NGX_OK,
};

use ngx::http::{HttpModuleLocationConf, NgxHttpCoreModule};

use crate::python::exchange::{Chunk, SHARE_MIN};
use crate::python::file_wrapper::FileBody;
use crate::python::response::{ResponseHead, Sink, SinkError};
use crate::Module;

/// A `Sink` writing straight into a request, on the event loop.
pub struct NgxSink {
    r: *mut ngx_http_request_t,
    /// Buffers nginx may still hold, and buffers free for reuse (nginx's chain helpers).
    busy: *mut ngx_chain_t,
    free: *mut ngx_chain_t,
    /// Chunks that buffers in `busy` point into, oldest first (in the request pool: nginx
    /// may still send from them after the sink is gone). Null until the first.
    held: *mut Held,
}

type Held = std::collections::VecDeque<Chunk>;

extern "C" fn drop_held(data: *mut c_void) {
    // SAFETY: the `Box<Held>` `held_list` registered with this cleanup; the pool (and every
    // buffer pointing into the chunks) is going away.
    drop(unsafe { Box::from_raw(data as *mut Held) });
}

fn tag() -> ngx_buf_tag_t {
    <crate::Module as ngx::http::HttpModule>::module() as *const _ as *mut c_void
}

impl NgxSink {
    /// # Safety
    /// `r` must be a live request, and the sink used only on its event loop thread while the
    /// request lives (it is dropped before the request is finalized).
    pub unsafe fn new(r: *mut ngx_http_request_t) -> NgxSink {
        NgxSink {
            r,
            busy: ptr::null_mut(),
            free: ptr::null_mut(),
            held: ptr::null_mut(),
        }
    }

    /// Copies `data` into the request pool as an `ngx_str_t`.
    fn pool_str(&self, data: &[u8]) -> Option<ngx_str_t> {
        // SAFETY: the request and its pool are live (constructor contract).
        let p = unsafe { ngx_pnalloc((*self.r).pool, data.len().max(1)) } as *mut u8;
        if p.is_null() {
            return None;
        }
        // SAFETY: `p` has room for `data.len()` bytes.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), p, data.len()) };
        Some(ngx_str_t {
            len: data.len(),
            data: p,
        })
    }

    /// A link with a buffer: one of this sink's free ones, else a new one (all zero).
    fn free_link(&mut self) -> Option<*mut ngx_chain_t> {
        // SAFETY: constructor contract: the live request's pool, on its thread; `free` is this
        // sink's own free list, of links from this pool.
        let cl = unsafe { ngx_chain_get_free_buf((*self.r).pool, &mut self.free) };
        (!cl.is_null()).then_some(cl)
    }

    /// A chain link whose buffer holds a copy of `data`: a free buffer of the module's when
    /// its memory is large enough, else fresh pool memory.
    fn buffer(&mut self, data: &[u8]) -> Option<*mut ngx_chain_t> {
        let cl = self.free_link()?;
        // SAFETY: constructor contract: the live request's pool, on its thread.
        let pool = unsafe { (*self.r).pool };
        // SAFETY: `cl` and its buffer are ours until they are passed to the filters; a
        // recycled buffer's `start..end` is pool memory it owns, a new one is all zero.
        unsafe {
            let b = &mut *(*cl).buf;
            if b.memory() != 0 {
                // A buffer that pointed into a held chunk: no memory of its own.
                b.start = ptr::null_mut();
                b.end = ptr::null_mut();
            }
            let room = if b.start.is_null() {
                0
            } else {
                b.end.offset_from(b.start) as usize
            };
            if room < data.len() {
                if !b.start.is_null() {
                    ngx_pfree(pool, b.start as *mut c_void);
                }
                let mem = ngx_palloc(pool, data.len()) as *mut u8;
                if mem.is_null() {
                    return None;
                }
                b.start = mem;
                b.end = mem.add(data.len());
            }
            let (start, end) = (b.start, b.end);
            ptr::write_bytes(b as *mut _, 0, 1);
            b.start = start;
            b.end = end;
            ptr::copy_nonoverlapping(data.as_ptr(), start, data.len());
            b.pos = start;
            b.last = start.add(data.len());
            b.set_temporary(1);
            b.set_flush(1);
            b.tag = tag();
            (*cl).next = ptr::null_mut();
        }
        Some(cl)
    }
}

/// True while nginx holds output of the main request it could not send yet (the test of
/// `ngx_http_writer`). Subrequests are never held back: their output may wait in the
/// postpone filter for its turn, which only the parent's progress brings.
///
/// # Safety
/// `r` is a live request, on its event loop thread.
pub unsafe fn output_busy(r: *mut ngx_http_request_t) -> bool {
    // SAFETY: reading flags of a live request and its connection.
    unsafe {
        let r = &*r;
        if !core::ptr::eq(r.main, r) {
            return false;
        }
        !r.out.is_null()
            || r.buffered() != 0
            || !r.postponed.is_null()
            || (*r.connection).buffered() != 0
    }
}

/// Where an application's response header goes besides the list: the `headers_out` field
/// nginx's filters read (as the upstream module's header handlers do for `proxy_pass`).
enum Field {
    Server,
    Date,
    Etag,
    Location,
    Refresh,
    Expires,
    ContentRange,
    AcceptRanges,
    ContentEncoding,
    LastModified,
    WwwAuthenticate,
    CacheControl,
    Link,
    None,
}

fn field_of(name: &[u8]) -> Field {
    type Entry = (&'static [u8], fn() -> Field);
    const FIELDS: &[Entry] = &[
        (b"server", || Field::Server),
        (b"date", || Field::Date),
        (b"etag", || Field::Etag),
        (b"location", || Field::Location),
        (b"refresh", || Field::Refresh),
        (b"expires", || Field::Expires),
        (b"content-range", || Field::ContentRange),
        (b"accept-ranges", || Field::AcceptRanges),
        (b"content-encoding", || Field::ContentEncoding),
        (b"last-modified", || Field::LastModified),
        (b"www-authenticate", || Field::WwwAuthenticate),
        (b"cache-control", || Field::CacheControl),
        (b"link", || Field::Link),
    ];
    FIELDS
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, f)| f())
        .unwrap_or(Field::None)
}

/// `type/subtype; charset=x` -> (length of the part before `;`, the charset), as
/// `ngx_http_upstream_copy_content_type` splits it.
pub fn split_charset(ct: &[u8]) -> Option<(usize, core::ops::Range<usize>)> {
    let mut i = 0;
    while let Some(semi) = ct[i..].iter().position(|&b| b == b';').map(|p| p + i) {
        let mut p = semi + 1;
        while ct.get(p) == Some(&b' ') {
            p += 1;
        }
        if ct.len() >= p + 8 && ct[p..p + 8].eq_ignore_ascii_case(b"charset=") {
            let mut start = p + 8;
            let mut end = ct.len();
            if ct.get(start) == Some(&b'"') {
                start += 1;
            }
            if end > start && ct[end - 1] == b'"' {
                end -= 1;
            }
            return Some((semi, start..end));
        }
        i = semi + 1;
    }
    None
}

impl NgxSink {
    /// Links `h` (a fresh element of `headers_out.headers`) from its `headers_out` field.
    ///
    /// # Safety
    /// `h` is a live element of the request's header list.
    unsafe fn link(&self, h: *mut ngx_table_elt_t, name: &[u8]) {
        // SAFETY: constructor contract for `r`; the caller's for `h`.
        unsafe {
            let r = &mut *self.r;
            let ho = &mut r.headers_out;
            let single = match field_of(name) {
                Field::Server => &mut ho.server,
                Field::Date => &mut ho.date,
                Field::Etag => &mut ho.etag,
                // A relative Location is not linked, as the upstream module does not: the
                // header filter would make it absolute.
                Field::Location if (*h).value.len > 0 && *(*h).value.data == b'/' => return,
                Field::Location => &mut ho.location,
                Field::Refresh => &mut ho.refresh,
                Field::Expires => &mut ho.expires,
                Field::ContentRange => &mut ho.content_range,
                Field::AcceptRanges => &mut ho.accept_ranges,
                Field::ContentEncoding => &mut ho.content_encoding,
                Field::LastModified => {
                    ho.last_modified_time = ngx_parse_http_time((*h).value.data, (*h).value.len);
                    &mut ho.last_modified
                }
                #[cfg(nginx1_23_0)]
                Field::WwwAuthenticate => return self.link_multi(&raw mut ho.www_authenticate, h),
                #[cfg(not(nginx1_23_0))]
                Field::WwwAuthenticate => &mut ho.www_authenticate,
                Field::CacheControl => return self.link_multi(&raw mut ho.cache_control, h),
                Field::Link => return self.link_multi(&raw mut ho.link, h),
                Field::None => return,
            };
            if single.is_null() {
                *single = h;
            }
        }
    }

    /// Appends `h` to a header that may repeat (1.23+: a list through `next`).
    #[cfg(nginx1_23_0)]
    unsafe fn link_multi(&self, head: *mut *mut ngx_table_elt_t, h: *mut ngx_table_elt_t) {
        // SAFETY: `head` is a field of the live request's `headers_out`, `h` a live element.
        unsafe {
            let mut ph = head;
            while !(*ph).is_null() {
                ph = &raw mut (**ph).next;
            }
            *ph = h;
        }
    }

    /// Appends `h` to a header that may repeat (1.22: an array of element pointers).
    #[cfg(not(nginx1_23_0))]
    unsafe fn link_multi(&self, a: *mut ngx::ffi::ngx_array_t, h: *mut ngx_table_elt_t) {
        // SAFETY: `a` is a field of the live request's `headers_out`; an array nobody used
        // yet is all zero and is set up here as `ngx_array_init` would.
        unsafe {
            let a = &mut *a;
            if a.elts.is_null() {
                let elts = ngx_palloc((*self.r).pool, core::mem::size_of::<*mut ngx_table_elt_t>());
                if elts.is_null() {
                    return;
                }
                a.elts = elts;
                a.nelts = 0;
                a.size = core::mem::size_of::<*mut ngx_table_elt_t>();
                a.nalloc = 1;
                a.pool = (*self.r).pool;
            }
            let slot = ngx::ffi::ngx_array_push(a) as *mut *mut ngx_table_elt_t;
            if !slot.is_null() {
                *slot = h;
            }
        }
    }
}

/// `Answered(REDIRECT)`: an `X-Accel-Redirect`, whose target waits in the request's
/// `Vars` (see `redirect`).
pub const REDIRECT: u16 = 0;

/// What `wsgi_ignore_headers` can turn off.
pub mod accel {
    pub const REDIRECT: u32 = 1;
    pub const EXPIRES: u32 = 2;
    pub const LIMIT_RATE: u32 = 4;
    pub const BUFFERING: u32 = 8;
    pub const CHARSET: u32 = 16;
    /// Names as `uwsgi_ignore_headers` takes them.
    pub const NAMES: &[(&str, u32)] = &[
        ("X-Accel-Redirect", REDIRECT),
        ("X-Accel-Expires", EXPIRES),
        ("X-Accel-Limit-Rate", LIMIT_RATE),
        ("X-Accel-Buffering", BUFFERING),
        ("X-Accel-Charset", CHARSET),
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accel {
    Redirect,
    Expires,
    LimitRate,
    Buffering,
    Charset,
}

fn accel_of(name: &[u8]) -> Option<Accel> {
    if name.len() < 8 || !name[..8].eq_ignore_ascii_case(b"x-accel-") {
        return None;
    }
    match name[8..].to_ascii_lowercase().as_slice() {
        b"redirect" => Some(Accel::Redirect),
        b"expires" => Some(Accel::Expires),
        b"limit-rate" => Some(Accel::LimitRate),
        b"buffering" => Some(Accel::Buffering),
        b"charset" => Some(Accel::Charset),
        _ => None,
    }
}

/// Headers of the application's response that the redirected response keeps (those the
/// upstream module copies on `X-Accel-Redirect`).
const KEPT_ON_REDIRECT: &[&[u8]] = &[
    b"set-cookie",
    b"content-disposition",
    b"cache-control",
    b"expires",
    b"accept-ranges",
];

/// True when the location has an `error_page` for `status`.
///
/// # Safety
/// `r` is a live request on its loop thread.
unsafe fn has_error_page(r: *mut ngx_http_request_t, status: u16) -> bool {
    // SAFETY: the caller's contract; `error_pages` is an array of `ngx_http_err_page_t`.
    unsafe {
        let Some(clcf) = NgxHttpCoreModule::location_conf(&*r) else {
            return false;
        };
        let pages = clcf.error_pages;
        if pages.is_null() {
            return false;
        }
        let pages = core::slice::from_raw_parts(
            (*pages).elts as *const ngx::ffi::ngx_http_err_page_t,
            (*pages).nelts,
        );
        pages.iter().any(|p| p.status == status as ngx_int_t)
    }
}

/// Carries out a pending `X-Accel-Redirect`: an internal redirect to a URI (the method
/// becomes GET, but for HEAD) or to a named location, as the upstream module does. Returns
/// the code to finalize the request with (`NGX_DONE`, or 404 for an unsafe URI).
///
/// # Safety
/// `r` is a live request on its loop thread, with no response sent, that its content
/// handler still holds (it is finalized with the result).
pub unsafe fn redirect(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: the caller's contract.
    unsafe {
        let Some(target) = crate::nginx::vars::get(r).and_then(|v| v.redirect.take()) else {
            return ngx::ffi::NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t;
        };
        let pool = (*r).pool;
        let data = ngx_pnalloc(pool, target.len().max(1)) as *mut u8;
        if data.is_null() {
            return NGX_ERROR as ngx_int_t;
        }
        ptr::copy_nonoverlapping(target.as_ptr(), data, target.len());
        let mut uri = ngx_str_t {
            len: target.len(),
            data,
        };
        crate::debug!(
            (*(*r).connection).log,
            "wsgi x-accel-redirect to \"{}\"",
            String::from_utf8_lossy(&target)
        );
        if target.first() == Some(&b'@') {
            ngx::ffi::ngx_http_named_location(r, &mut uri);
        } else {
            let mut args = ngx_str_t {
                len: 0,
                data: ptr::null_mut(),
            };
            let mut flags: ngx_uint_t = ngx::ffi::NGX_HTTP_LOG_UNSAFE as ngx_uint_t;
            if ngx::ffi::ngx_http_parse_unsafe_uri(r, &mut uri, &mut args, &mut flags)
                != NGX_OK as ngx_int_t
            {
                return ngx::ffi::NGX_HTTP_NOT_FOUND as ngx_int_t;
            }
            if (*r).method != ngx::ffi::NGX_HTTP_HEAD as ngx_uint_t {
                (*r).method = ngx::ffi::NGX_HTTP_GET as ngx_uint_t;
                (*r).method_name = ngx::ffi::ngx_str_t {
                    len: 3,
                    data: c"GET".as_ptr() as *mut u8,
                };
            }
            ngx::ffi::ngx_http_internal_redirect(r, &mut uri, &mut args);
        }
        ngx::ffi::NGX_DONE as ngx_int_t
    }
}

impl NgxSink {
    /// Pushes a response header onto `headers_out` and links it from its field.
    fn push_header(
        &mut self,
        name: &[u8],
        value: &[u8],
    ) -> Result<*mut ngx_table_elt_t, SinkError> {
        let key = self.pool_str(name).ok_or(SinkError::Closed)?;
        let val = self.pool_str(value).ok_or(SinkError::Closed)?;
        let low = self
            .pool_str(&name.to_ascii_lowercase())
            .ok_or(SinkError::Closed)?;
        // SAFETY: constructor contract; pushing onto the request's own header list.
        let h =
            unsafe { ngx_list_push(&mut (*self.r).headers_out.headers) } as *mut ngx_table_elt_t;
        if h.is_null() {
            return Err(SinkError::Closed);
        }
        // SAFETY: `h` is a fresh element of the list.
        unsafe {
            (*h).hash = 1;
            (*h).key = key;
            (*h).value = val;
            (*h).lowcase_key = low.data;
            #[cfg(nginx1_23_0)]
            {
                (*h).next = ptr::null_mut();
            }
            self.link(h, name);
        }
        Ok(h)
    }

    /// `Content-Type`, with its charset split off as the upstream module does.
    fn content_type(&mut self, ct: &[u8]) -> Result<(), SinkError> {
        let s = self.pool_str(ct).ok_or(SinkError::Closed)?;
        // SAFETY: constructor contract.
        let r = unsafe { &mut *self.r };
        r.headers_out.content_type = s;
        r.headers_out.content_type_len = s.len;
        r.headers_out.content_type_lowcase = ptr::null_mut();
        if let Some((len, charset)) = split_charset(ct) {
            r.headers_out.content_type_len = len;
            // SAFETY: the range lies inside the pool copy of `ct`.
            let data = unsafe { s.data.add(charset.start) };
            r.headers_out.charset = ngx_str_t {
                len: charset.len(),
                data,
            };
        }
        Ok(())
    }

    /// `X-Accel-Limit-Rate: N | off`.
    fn limit_rate(&mut self, value: &[u8]) {
        let text = String::from_utf8_lossy(value);
        let rate = if text.trim().eq_ignore_ascii_case("off") {
            Some(0)
        } else {
            text.trim().parse::<usize>().ok()
        };
        if let Some(rate) = rate {
            // SAFETY: constructor contract.
            let r = unsafe { &mut *self.r };
            r.limit_rate = rate;
            r.set_limit_rate_set(1);
        }
    }

    /// `X-Accel-Charset`: the charset filter recodes to it (`override_charset`).
    fn charset(&mut self, value: &[u8]) -> Result<(), SinkError> {
        let s = self.pool_str(value).ok_or(SinkError::Closed)?;
        // SAFETY: constructor contract; the string lives in the request pool.
        unsafe {
            let p = ngx_palloc((*self.r).pool, core::mem::size_of::<ngx_str_t>()) as *mut ngx_str_t;
            if p.is_null() {
                return Err(SinkError::Closed);
            }
            *p = s;
            (*self.r).headers_out.override_charset = p;
        }
        Ok(())
    }
}

impl Sink for NgxSink {
    fn start(&mut self, head: &ResponseHead) -> Result<bool, SinkError> {
        // SAFETY: the live request, on its thread (constructor contract).
        if let Some(vars) = unsafe { crate::nginx::vars::get_or_make(self.r) } {
            vars.status = Some(head.status);
        }
        // SAFETY: constructor contract.
        let lcf = Module::location_conf(unsafe { &*self.r });
        let ignore = lcf.map(|l| l.ignore_headers).unwrap_or(0);
        let intercept = lcf.and_then(|l| l.intercept_errors).unwrap_or(false);

        // X-Accel-* are instructions to nginx, not headers for the client (proxy_pass hides
        // them too); wsgi_ignore_headers turns each off.
        let mut redirect = None;
        for (name, value) in &head.headers {
            match accel_of(name) {
                Some(Accel::Redirect) if ignore & accel::REDIRECT == 0 => {
                    redirect = Some(value.clone())
                }
                Some(Accel::LimitRate) if ignore & accel::LIMIT_RATE == 0 => self.limit_rate(value),
                Some(Accel::Charset) if ignore & accel::CHARSET == 0 => self.charset(value)?,
                _ => {}
            }
        }
        if let Some(uri) = redirect {
            // The headers nginx keeps for the redirected response, as for proxy_pass.
            if let Some(ct) = &head.content_type {
                self.content_type(ct)?;
            }
            for (name, value) in &head.headers {
                if KEPT_ON_REDIRECT
                    .iter()
                    .any(|k| k.eq_ignore_ascii_case(name))
                {
                    self.push_header(name, value)?;
                }
            }
            // SAFETY: as above.
            if let Some(vars) = unsafe { crate::nginx::vars::get_or_make(self.r) } {
                vars.redirect = Some(uri);
            }
            return Err(SinkError::Answered(REDIRECT));
        }
        // SAFETY: constructor contract.
        if intercept && head.status >= 300 && unsafe { has_error_page(self.r, head.status) } {
            if head.status == 401 {
                for (name, value) in head
                    .headers
                    .iter()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(b"www-authenticate"))
                {
                    self.push_header(name, value)?;
                }
            }
            return Err(SinkError::Answered(head.status));
        }

        // SAFETY: constructor contract: a live request on its own thread.
        let r = unsafe { &mut *self.r };
        r.headers_out.status = head.status as usize;
        r.headers_out.status_line = self.pool_str(&head.status_line).ok_or(SinkError::Closed)?;
        // The application answered conditional requests itself (or chose not to): nginx must
        // not turn its 200 into a 412 or 304 afterwards, as for uncached `proxy_pass`.
        r.set_disable_not_modified(1);
        let no_content = matches!(head.status, 100..=199 | 204);
        if no_content || head.status == 304 {
            // With our own status line the header filter skips its 204/304 handling.
            r.set_header_only(1);
        }
        if let Some(ct) = &head.content_type {
            self.content_type(ct)?;
        }
        // SAFETY: as above.
        let r = unsafe { &mut *self.r };
        // RFC 9110 8.6: never a Content-Length on 1xx and 204.
        r.headers_out.content_length_n = match head.content_length {
            Some(n) if !no_content => n as _,
            _ => -1,
        };
        for (name, value) in &head.headers {
            if accel_of(name).is_none() {
                self.push_header(name, value)?;
            }
        }
        // SAFETY: as above.
        let r = unsafe { &mut *self.r };
        if head.close {
            r.set_keepalive(0);
        }
        if head.file_body
            && head.status == 200
            && !head
                .headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(b"content-range"))
        {
            // A whole regular file: nginx's range filter may answer Range with 206/416.
            r.set_allow_ranges(1);
        }
        // SAFETY: sending the header of a live request.
        let rc = unsafe { ngx_http_send_header(r) };
        if rc > NGX_OK as ngx_int_t && rc < 1000 {
            // A header filter wants nginx to answer instead (416 for a bad range).
            return Err(SinkError::Answered(rc as u16));
        }
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t {
            return Err(SinkError::Closed);
        }
        Ok(r.header_only() == 0)
    }

    fn file(&mut self, file: FileBody) -> Result<(), SinkError> {
        self.file_body(file)
    }

    fn log_vars(&mut self, vars: Vec<(String, String)>) {
        // SAFETY: constructor contract.
        if let Some(v) = unsafe { crate::nginx::vars::get_or_make(self.r) } {
            v.log = vars;
        }
    }

    fn paused(&self) -> bool {
        // SAFETY: constructor contract.
        unsafe { output_busy(self.r) }
    }

    fn no_body(&self) -> bool {
        // SAFETY: constructor contract.
        let r = unsafe { &*self.r };
        r.header_only() != 0 || r.method == ngx::ffi::NGX_HTTP_HEAD as ngx_uint_t
    }

    /// Sends (and flushes) a copy of `data`.
    fn body(&mut self, data: &[u8]) -> Result<(), SinkError> {
        let mut chain = Chain::default();
        if !data.is_empty() {
            chain.push(self.buffer(data).ok_or(SinkError::Closed)?);
        }
        self.send_chain(chain)
    }
}

impl NgxSink {
    /// Sends a Python thread's pieces in one chain (one pass through the filters, one
    /// write), flushed at its end: long ones from where they are, short ones copied.
    pub fn body_chunks(&mut self, chunks: Vec<Chunk>) -> Result<(), SinkError> {
        let mut chain = Chain::default();
        for chunk in chunks.into_iter().filter(|c| !c.is_empty()) {
            let cl = match chunk {
                Chunk::Owned(ref v) if v.len() < SHARE_MIN => self.buffer(v),
                chunk => self.held_buffer(chunk),
            };
            chain.push(cl.ok_or(SinkError::Closed)?);
        }
        self.send_chain(chain)
    }

    /// A chain link whose buffer points at `chunk`, which the request holds until nginx has
    /// sent it.
    fn held_buffer(&mut self, chunk: Chunk) -> Option<*mut ngx_chain_t> {
        let held = self.held_list()?;
        let cl = self.free_link()?;
        // SAFETY: `cl` and its buffer are ours until they are passed to the filters. A
        // recycled buffer's own memory (if any) stays in the pool; the chunk's bytes do not
        // move while it lives in `held`, which outlives every use of the buffer (released
        // once nginx has sent it, or with the pool).
        unsafe {
            let b = &mut *(*cl).buf;
            ptr::write_bytes(b as *mut _, 0, 1);
            let start = chunk.as_ptr() as *mut u8;
            b.start = start;
            b.pos = start;
            b.last = start.add(chunk.len());
            b.end = b.last;
            b.set_memory(1);
            b.set_flush(1);
            b.tag = tag();
            (*cl).next = ptr::null_mut();
            (*held).push_back(chunk);
        }
        Some(cl)
    }

    /// The request's list of held chunks, made (with its pool cleanup) on first use.
    fn held_list(&mut self) -> Option<*mut Held> {
        if self.held.is_null() {
            // SAFETY: the live request's pool (constructor contract); the cleanup frees the
            // list when the pool is destroyed.
            unsafe {
                let cln = ngx::ffi::ngx_pool_cleanup_add((*self.r).pool, 0);
                if cln.is_null() {
                    return None;
                }
                let held = Box::into_raw(Box::<Held>::default());
                (*cln).handler = Some(drop_held);
                (*cln).data = held as *mut c_void;
                self.held = held;
            }
        }
        Some(self.held)
    }

    /// Passes `chain` to the filters, flushed at its end; then nginx's helper moves the sent
    /// buffers from `busy` to `free`, and chunks no buffer in `busy` points into any more are
    /// dropped.
    fn send_chain(&mut self, chain: Chain) -> Result<(), SinkError> {
        let mut out = chain.first;
        if out.is_null() {
            return Ok(());
        }
        // SAFETY: a chain of our own buffers into the live request's filters; the pool is the
        // request's; `held` (if set) is the request's list, and buffers leave `busy` in the
        // order they entered it, so the still-busy `memory` buffers are the newest chunks.
        let rc = unsafe {
            let rc = ngx_http_output_filter(self.r, out);
            ngx_chain_update_chains(
                (*self.r).pool,
                &mut self.free,
                &mut self.busy,
                &mut out,
                tag(),
            );
            if !self.held.is_null() {
                let mut busy_held = 0;
                let mut cl = self.busy;
                while !cl.is_null() {
                    if (*(*cl).buf).memory() != 0 {
                        busy_held += 1;
                    }
                    cl = (*cl).next;
                }
                let held = &mut *self.held;
                let sent = held.len().saturating_sub(busy_held);
                held.drain(..sent);
            }
            rc
        };
        if rc == NGX_ERROR as ngx_int_t {
            return Err(SinkError::Closed);
        }
        // SAFETY: reading the connection state of the live request.
        if unsafe { (*(*self.r).connection).error() } != 0 {
            return Err(SinkError::Closed);
        }
        Ok(())
    }
}

/// Links being put together into one chain; only the last buffer keeps its flush flag.
struct Chain {
    first: *mut ngx_chain_t,
    last: *mut ngx_chain_t,
}

impl Default for Chain {
    fn default() -> Chain {
        Chain {
            first: ptr::null_mut(),
            last: ptr::null_mut(),
        }
    }
}

impl Chain {
    fn push(&mut self, cl: *mut ngx_chain_t) {
        // SAFETY: our own fresh links, each with a buffer.
        unsafe {
            if self.last.is_null() {
                self.first = cl;
            } else {
                (*self.last).next = cl;
                (*(*self.last).buf).set_flush(0);
            }
        }
        self.last = cl;
    }
}

impl NgxSink {
    /// Sends `file.len` bytes of a regular file as an `in_file` buffer: nginx reads it itself
    /// (sendfile, `aio`, `output_buffers`, and filters that need memory read it through the
    /// copy filter). The descriptor belongs to the request pool from here on.
    pub fn file_body(&mut self, file: FileBody) -> Result<(), SinkError> {
        use std::os::fd::IntoRawFd;
        // SAFETY: constructor contract: the live request's pool and connection, on its thread.
        unsafe {
            let r = &mut *self.r;
            let pool = r.pool;
            let log = (*r.connection).log;
            let size = core::mem::size_of::<ngx::ffi::ngx_pool_cleanup_file_t>();
            let cln = ngx::ffi::ngx_pool_cleanup_add(pool, size);
            let f = ngx::ffi::ngx_pcalloc(pool, core::mem::size_of::<ngx::ffi::ngx_file_t>())
                as *mut ngx::ffi::ngx_file_t;
            let b = ngx::ffi::ngx_pcalloc(pool, core::mem::size_of::<ngx::ffi::ngx_buf_t>())
                as *mut ngx::ffi::ngx_buf_t;
            let cl = ngx::ffi::ngx_alloc_chain_link(pool);
            if cln.is_null() || f.is_null() || b.is_null() || cl.is_null() {
                return Err(SinkError::Closed);
            }
            let fd = file.fd.into_raw_fd();
            let name = c"wsgi.file_wrapper";
            let clnf = (*cln).data as *mut ngx::ffi::ngx_pool_cleanup_file_t;
            (*clnf).fd = fd;
            (*clnf).name = name.as_ptr() as *mut u8;
            (*clnf).log = log;
            (*cln).handler = Some(ngx::ffi::ngx_pool_cleanup_file);
            (*f).fd = fd;
            (*f).name = ngx_str_t {
                len: name.to_bytes().len(),
                data: name.as_ptr() as *mut u8,
            };
            (*f).log = log;
            // `directio`: a file at least that large is read with O_DIRECT, as the static
            // module does (then sendfile does not apply to it).
            if let Some(clcf) = NgxHttpCoreModule::location_conf(r) {
                let size = (file.offset + file.len) as ngx::ffi::off_t;
                if (clcf.directio as u64) < ngx::ffi::NGX_MAX_OFF_T_VALUE
                    && size >= clcf.directio
                    && set_direct_io(fd)
                {
                    (*f).set_directio(1);
                }
            }
            (*b).file = f;
            (*b).set_in_file(1);
            (*b).file_pos = file.offset as _;
            (*b).file_last = (file.offset + file.len) as _;
            (*b).set_flush(1);
            (*cl).buf = b;
            (*cl).next = ptr::null_mut();
            let rc = ngx_http_output_filter(r, cl);
            if rc == NGX_ERROR as ngx_int_t || (*r.connection).error() != 0 {
                return Err(SinkError::Closed);
            }
        }
        Ok(())
    }
}

/// `ngx_directio_on`: O_DIRECT on an open descriptor (a macro in nginx).
fn set_direct_io(fd: i32) -> bool {
    // SAFETY: fcntl on a descriptor the request pool owns; reading and setting its flags.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_DIRECT) == 0
    }
}

/// Ends a response whose head and body went out: the last buffer, for the chunked
/// terminator and the end of the filters. Returns the code to finalize the request with.
///
/// # Safety
/// `r` must be a live request whose header has been sent.
pub unsafe fn finish(r: *mut ngx_http_request_t, short: bool) -> ngx_int_t {
    // SAFETY: the caller's contract.
    let req = unsafe { &mut *r };
    if short {
        // Fewer bytes than the Content-Length: close the connection so the client can tell.
        req.set_keepalive(0);
    }
    if req.header_only() != 0 {
        return NGX_OK as ngx_int_t;
    }
    // SAFETY: the caller's contract.
    unsafe { ngx_http_send_special(r, NGX_HTTP_LAST as ngx_uint_t) }
}
