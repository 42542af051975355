#![forbid(unsafe_code)]
//! The request as the application gets it: owned bytes copied out of nginx on the event
//! loop (`nginx/request.rs`), so nothing on the Python side points into nginx.

use crate::python::input::BodySegment;

/// The request as the application sees it: raw bytes, as nginx holds them.
#[derive(Debug, Default)]
pub struct RequestParts {
    pub method: Vec<u8>,
    /// Percent-decoded, normalised path (`r->uri`).
    pub uri: Vec<u8>,
    /// Raw query string (`r->args`).
    pub args: Vec<u8>,
    /// The request target as sent (`r->unparsed_uri`).
    pub request_uri: Vec<u8>,
    pub protocol: Vec<u8>,
    /// Request headers in arrival order, names as sent.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub remote_addr: Vec<u8>,
    pub remote_port: u16,
    pub server_name: Vec<u8>,
    pub server_port: u16,
    pub https: bool,
    /// Whether the request carried a body (a Content-Length or a chunked body).
    pub has_body: bool,
    pub body: Vec<BodySegment>,
    pub body_len: u64,
    pub script_name: Option<String>,
    /// `wsgi_max_header_size` of the location.
    pub max_header_size: usize,
    /// `wsgi_param`s, evaluated: they override the module's own keys.
    pub params: Vec<(String, Vec<u8>)>,
}
