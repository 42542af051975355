//! Writes a response into nginx: `headers_out`, the header filter chain, and body buffers
//! through the body filter chain.
//!
//! Ownership: buffers are allocated from the request pool. Large buffers (the usual case for
//! streamed bodies) are returned to the pool with `ngx_pfree` as soon as nginx has sent them,
//! and their `ngx_buf_t`/`ngx_chain_t` are reused, so a long stream does not grow the pool
//! by its length.

use core::ptr;

use ngx::ffi::{
    ngx_alloc_chain_link, ngx_buf_t, ngx_chain_t, ngx_http_output_filter, ngx_http_request_t,
    ngx_http_send_header, ngx_http_send_special, ngx_int_t, ngx_list_push, ngx_palloc, ngx_pfree,
    ngx_pnalloc, ngx_str_t, ngx_table_elt_t, NGX_ERROR, NGX_HTTP_LAST, NGX_OK,
};

use crate::response::{ResponseHead, Sink, SinkError};

/// A `Sink` writing straight into a request, on the event loop.
pub struct NgxSink {
    r: *mut ngx_http_request_t,
    /// Chain links whose buffers nginx may still hold.
    busy: Vec<*mut ngx_chain_t>,
    /// Chain links (with their `ngx_buf_t`) free for reuse.
    free: Vec<*mut ngx_chain_t>,
}

impl NgxSink {
    /// # Safety
    /// `r` must be a live request, and the sink used only on its event loop thread while the
    /// request lives (it is dropped before the request is finalized).
    pub unsafe fn new(r: *mut ngx_http_request_t) -> NgxSink {
        NgxSink { r, busy: Vec::new(), free: Vec::new() }
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
        Some(ngx_str_t { len: data.len(), data: p })
    }

    /// Returns sent buffers to the pool and their links to the free list.
    fn reclaim(&mut self) {
        let pool = unsafe { (*self.r).pool };
        let mut i = 0;
        while i < self.busy.len() {
            let cl = self.busy[i];
            // SAFETY: busy links and their buffers were allocated by us from the request pool.
            let b = unsafe { &mut *(*cl).buf };
            if b.pos == b.last {
                unsafe { ngx_pfree(pool, b.start as *mut _) };
                b.start = ptr::null_mut();
                self.free.push(cl);
                self.busy.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn buffer(&mut self, data: &[u8]) -> Option<*mut ngx_chain_t> {
        let pool = unsafe { (*self.r).pool };
        let cl = match self.free.pop() {
            Some(cl) => cl,
            None => {
                // SAFETY: plain pool allocations; null is checked.
                let cl = unsafe { ngx_alloc_chain_link(pool) };
                let b = unsafe { ngx_palloc(pool, core::mem::size_of::<ngx_buf_t>()) } as *mut ngx_buf_t;
                if cl.is_null() || b.is_null() {
                    return None;
                }
                unsafe { (*cl).buf = b };
                cl
            }
        };
        let mem = unsafe { ngx_palloc(pool, data.len()) } as *mut u8;
        if mem.is_null() {
            return None;
        }
        // SAFETY: `mem` has room for the data; the buffer is reset to a fresh temporary
        // memory buffer covering it.
        unsafe {
            ptr::copy_nonoverlapping(data.as_ptr(), mem, data.len());
            let b = (*cl).buf;
            ptr::write_bytes(b, 0, 1);
            (*b).start = mem;
            (*b).pos = mem;
            (*b).last = mem.add(data.len());
            (*b).end = (*b).last;
            (*b).set_temporary(1);
            (*b).set_flush(1);
            (*cl).next = ptr::null_mut();
        }
        Some(cl)
    }
}

fn is_header(name: &[u8], want: &[u8]) -> bool {
    name.eq_ignore_ascii_case(want)
}

impl Sink for NgxSink {
    fn start(&mut self, head: &ResponseHead) -> Result<bool, SinkError> {
        // SAFETY: constructor contract: a live request on its own thread.
        let r = unsafe { &mut *self.r };
        r.headers_out.status = head.status as usize;
        r.headers_out.status_line = self.pool_str(&head.status_line).ok_or(SinkError::Closed)?;
        if matches!(head.status, 100..=199 | 204 | 304) {
            // With our own status line the header filter skips its 204/304 handling.
            r.set_header_only(1);
        }
        if let Some(ct) = &head.content_type {
            let s = self.pool_str(ct).ok_or(SinkError::Closed)?;
            r.headers_out.content_type_len = s.len;
            r.headers_out.content_type = s;
        }
        r.headers_out.content_length_n = head.content_length.map(|n| n as i64).unwrap_or(-1) as _;
        for (name, value) in &head.headers {
            let key = self.pool_str(name).ok_or(SinkError::Closed)?;
            let val = self.pool_str(value).ok_or(SinkError::Closed)?;
            let lower: Vec<u8> = name.to_ascii_lowercase();
            let low = self.pool_str(&lower).ok_or(SinkError::Closed)?;
            // SAFETY: pushing onto the request's own header list.
            let h = unsafe { ngx_list_push(&mut r.headers_out.headers) } as *mut ngx_table_elt_t;
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
            }
            // An application's own Date or Server replaces nginx's, instead of doubling it.
            if is_header(name, b"date") {
                r.headers_out.date = h;
            } else if is_header(name, b"server") {
                r.headers_out.server = h;
            }
        }
        if head.close {
            r.set_keepalive(0);
        }
        // SAFETY: sending the header of a live request.
        let rc = unsafe { ngx_http_send_header(r) };
        if rc == NGX_ERROR as ngx_int_t || rc > NGX_OK as ngx_int_t {
            return Err(SinkError::Closed);
        }
        Ok(r.header_only() == 0)
    }

    fn body(&mut self, data: &[u8]) -> Result<(), SinkError> {
        self.body_pieces(&[data])
    }
}

impl NgxSink {
    /// Sends several body pieces in one chain (one pass through the filters, one write),
    /// flushed at its end.
    pub fn body_pieces(&mut self, pieces: &[&[u8]]) -> Result<(), SinkError> {
        self.reclaim();
        let mut first: *mut ngx_chain_t = ptr::null_mut();
        let mut last: *mut ngx_chain_t = ptr::null_mut();
        for piece in pieces.iter().filter(|p| !p.is_empty()) {
            let cl = self.buffer(piece).ok_or(SinkError::Closed)?;
            // SAFETY: our own fresh links; only the chain's last buffer is flushed.
            unsafe {
                if last.is_null() {
                    first = cl;
                } else {
                    (*last).next = cl;
                    (*(*last).buf).set_flush(0);
                }
            }
            last = cl;
            self.busy.push(cl);
        }
        if first.is_null() {
            return Ok(());
        }
        // SAFETY: a chain of our own buffers into the live request's filters.
        let rc = unsafe { ngx_http_output_filter(self.r, first) };
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
    unsafe { ngx_http_send_special(r, NGX_HTTP_LAST as ngx_uint_t) }
}

use ngx::ffi::ngx_uint_t;
