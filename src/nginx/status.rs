//! The `wsgi_status` content handler: this server's workers, as JSON, from the shared board.

use ngx::ffi::{
    ngx_http_discard_request_body, ngx_http_request_t, ngx_int_t, NGX_HTTP_GET, NGX_HTTP_HEAD,
    NGX_HTTP_INTERNAL_SERVER_ERROR, NGX_HTTP_NOT_ALLOWED, NGX_OK,
};

use crate::nginx::output::{self, NgxSink};
use crate::python::response::{ResponseHead, Sink};
use crate::stats;

/// `clcf->handler` of a `wsgi_status` location.
pub(crate) extern "C" fn handler(r: *mut ngx_http_request_t) -> ngx_int_t {
    // SAFETY: nginx calls content handlers with a live request, on its loop thread.
    unsafe {
        if (*r).method & (NGX_HTTP_GET | NGX_HTTP_HEAD) as usize == 0 {
            return NGX_HTTP_NOT_ALLOWED as ngx_int_t;
        }
        let rc = ngx_http_discard_request_body(r);
        if rc != NGX_OK as ngx_int_t {
            return rc;
        }
        let server = crate::python::environ::server_software();
        let body = stats::status_json(&server);
        let head = ResponseHead {
            status: 200,
            status_line: b"200 OK".to_vec(),
            content_type: Some(b"application/json".to_vec()),
            content_length: Some(body.len() as u64),
            headers: vec![(b"Cache-Control".to_vec(), b"no-store".to_vec())],
            close: false,
            file_body: false,
        };
        let mut sink = NgxSink::new(r);
        match sink.start(&head) {
            Ok(true) => {}
            Ok(false) => return NGX_OK as ngx_int_t,
            Err(_) => return NGX_HTTP_INTERNAL_SERVER_ERROR as ngx_int_t,
        }
        if sink.body(body.as_bytes()).is_err() {
            return ngx::ffi::NGX_ERROR as ngx_int_t;
        }
        output::finish(r, false)
    }
}
