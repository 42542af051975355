//! The nginx side: code that runs on the event loop and touches nginx's structures.

pub mod handler;
pub mod output;
pub mod recycle;
pub mod request;
pub mod status;
pub mod vars;
pub mod writer;
pub mod zone;
