#![forbid(unsafe_code)]
//! The meeting point of one request's Python thread and the event loop (safe code only).
//!
//! The Python thread produces `Event`s (the head, body pieces, log lines, the outcome) into
//! the exchange and wakes the loop (with the waker the bridge registered, `set_waker`). The loop takes them when it can send:
//! while nginx still holds unsent output, it takes nothing, the queued bytes stay above
//! `QUEUE_LIMIT`, and the producing thread waits in `ThreadSink::body`, detached from the
//! interpreter. That is the backpressure: a slow client slows the application, memory stays
//! bounded by the limit plus what nginx holds.
//!
//! The loop cancels an exchange when the client goes away or the request times out; the
//! thread then gets an error from its next write and the application's iterable is closed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use pyo3::prelude::*;

use crate::log::LogWrite;
use crate::python::response::{ResponseHead, Sink, SinkError};
use crate::python::wsgi::Outcome;

/// Body bytes a request may have queued for the loop before its thread waits.
pub const QUEUE_LIMIT: usize = 256 * 1024;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// How a thread tells the loop that an exchange has news (registered by the bridge).
type Waker = Box<dyn Fn(Arc<Exchange>) + Send + Sync>;
static WAKER: OnceLock<Waker> = OnceLock::new();

/// Registers the loop's wake-up (once, when the worker starts).
pub fn set_waker(waker: Waker) {
    let _ = WAKER.set(waker);
}

/// Pieces at least this long go to the loop as the application's own `bytes` object, not a
/// copy (`Chunk::Shared`); shorter ones are copied, which costs less than the reference.
pub const SHARE_MIN: usize = 4096;

/// A piece of body for the loop.
pub enum Chunk {
    Owned(Vec<u8>),
    /// `len` bytes at `addr` inside a Python `bytes` object, which `owner` keeps alive: a
    /// `bytes` object never changes or moves, so nginx sends straight from it. Dropped
    /// anywhere (pyo3 defers the reference count to the next thread that takes the GIL).
    Shared {
        owner: Py<PyAny>,
        addr: usize,
        len: usize,
    },
}

impl Chunk {
    /// A slice of `owner`'s bytes: shared when long enough, else copied.
    pub fn of(owner: &Bound<'_, PyAny>, data: &[u8]) -> Chunk {
        if data.len() < SHARE_MIN {
            return Chunk::Owned(data.to_vec());
        }
        Chunk::Shared {
            owner: owner.clone().unbind(),
            addr: data.as_ptr().expose_provenance(),
            len: data.len(),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Chunk::Owned(v) => v.len(),
            Chunk::Shared { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where the bytes are; valid while the chunk lives.
    pub fn as_ptr(&self) -> *const u8 {
        match self {
            Chunk::Owned(v) => v.as_ptr(),
            Chunk::Shared { addr, .. } => std::ptr::with_exposed_provenance(*addr),
        }
    }
}

impl std::fmt::Debug for Chunk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Chunk({} bytes)", self.len())
    }
}

#[derive(Debug)]
pub enum Event {
    Head(ResponseHead),
    Body(Chunk),
    /// `environ["nginx.log_vars"]`, at the end.
    LogVars(Vec<(String, String)>),
    /// A regular file as the whole body.
    File(crate::python::file_wrapper::FileBody),
    Log(u32, String),
    /// The outcome, how long the application ran, and how long it waited for a thread.
    Done(Outcome, std::time::Duration, std::time::Duration),
}

#[derive(Default)]
struct Inner {
    /// Events the thread has produced but not yet handed over: a response whose pieces are
    /// all at hand (a list) goes to the loop in one hand-over, with one wake-up.
    staged: Vec<Event>,
    staged_bytes: usize,
    events: VecDeque<Event>,
    queued: usize,
    /// Already in the bridge's list of exchanges with news.
    scheduled: bool,
    /// The thread waits on `room` (a notification is a futex call: only then).
    waiting_room: bool,
}

pub struct Exchange {
    inner: Mutex<Inner>,
    room: Condvar,
    cancelled: AtomicBool,
    /// `threading.get_ident()` of the thread running the application, 0 before it starts.
    pub thread_ident: AtomicU64,
    /// The watchdog raised the timeout exception in the application's thread.
    pub interrupted: AtomicBool,
    /// Names the exchange to the loop, which keeps its own state per id.
    pub id: u64,
    /// "GET /path" for messages about this request that outlive it.
    pub what: String,
}

impl Exchange {
    pub fn new(what: String) -> Arc<Exchange> {
        Arc::new(Exchange {
            inner: Mutex::new(Inner::default()),
            room: Condvar::new(),
            cancelled: AtomicBool::new(false),
            thread_ident: AtomicU64::new(0),
            interrupted: AtomicBool::new(false),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            what,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }

    /// Loop side: the request is gone (client closed, timeout, shutdown).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
        let _g = self.lock();
        self.room.notify_all();
    }

    /// Thread side: queues an event and wakes the loop if it does not know yet.
    pub fn push(self: &Arc<Self>, ev: Event) {
        let mut g = self.lock();
        if !g.staged.is_empty() {
            let staged = std::mem::take(&mut g.staged);
            g.queued += std::mem::take(&mut g.staged_bytes);
            g.events.extend(staged);
        }
        if let Event::Body(b) = &ev {
            g.queued += b.len();
        }
        g.events.push_back(ev);
        if !g.scheduled {
            g.scheduled = true;
            drop(g);
            if let Some(wake) = WAKER.get() {
                wake(self.clone());
            }
        }
    }

    /// Thread side: keeps an event for the next `push`. Returns false (and keeps nothing)
    /// when the staged body would pass the queue limit.
    fn stage(&self, ev: Event) -> Result<(), Event> {
        let mut g = self.lock();
        let len = match &ev {
            Event::Body(b) => b.len(),
            _ => 0,
        };
        if g.staged_bytes + len > QUEUE_LIMIT {
            return Err(ev);
        }
        g.staged_bytes += len;
        g.staged.push(ev);
        Ok(())
    }

    /// Loop side: takes the next event.
    pub fn pop(&self) -> Option<Event> {
        let mut g = self.lock();
        let ev = g.events.pop_front();
        if let Some(Event::Body(b)) = &ev {
            g.queued -= b.len();
            self.made_room(&g);
        }
        ev
    }

    /// Loop side: takes the next event if it is a body piece.
    pub fn pop_body(&self) -> Option<Chunk> {
        let mut g = self.lock();
        if !matches!(g.events.front(), Some(Event::Body(_))) {
            return None;
        }
        let Some(Event::Body(b)) = g.events.pop_front() else {
            return None;
        };
        g.queued -= b.len();
        self.made_room(&g);
        Some(b)
    }

    /// Loop side: called when the exchange leaves the bridge's list, before draining it;
    /// later pushes schedule it again.
    pub fn unschedule(&self) {
        self.lock().scheduled = false;
    }

    fn made_room(&self, g: &Inner) {
        if g.waiting_room && g.queued < QUEUE_LIMIT {
            self.room.notify_all();
        }
    }

    fn has_room(&self, len: usize) -> bool {
        let g = self.lock();
        !self.is_cancelled() && (g.queued == 0 || g.queued + len <= QUEUE_LIMIT)
    }

    /// Thread side: waits (without the GIL) until `len` more bytes fit, or cancellation.
    fn wait_for_room(&self, len: usize) -> bool {
        let mut g = self.lock();
        while !self.is_cancelled() && g.queued > 0 && g.queued + len > QUEUE_LIMIT {
            g.waiting_room = true;
            g = self.room.wait(g).unwrap_or_else(|e| e.into_inner());
            g.waiting_room = false;
        }
        !self.is_cancelled()
    }
}

impl LogWrite for Arc<Exchange> {
    fn write(&self, level: u32, msg: &str) {
        self.push(Event::Log(level, msg.to_string()));
    }
}

/// The `Sink` of an application running on a Python thread.
pub struct ThreadSink {
    pub ex: Arc<Exchange>,
    /// A HEAD request or a header-only subrequest: the head goes out, the body does not.
    pub no_body: bool,
}

impl Sink for ThreadSink {
    fn start(&mut self, head: &ResponseHead) -> Result<bool, SinkError> {
        if self.ex.is_cancelled() {
            return Err(SinkError::Closed);
        }
        let body = !self.no_body && !matches!(head.status, 100..=199 | 204 | 304);
        // The head waits for the first body piece or the end, whichever comes first.
        if let Err(ev) = self.ex.stage(Event::Head(head.clone())) {
            self.ex.push(ev);
        }
        Ok(body)
    }

    fn body(&mut self, data: &[u8]) -> Result<(), SinkError> {
        self.send(Chunk::Owned(data.to_vec()), false)
    }

    fn body_of(
        &mut self,
        data: &[u8],
        owner: &Bound<'_, PyAny>,
        batched: bool,
    ) -> Result<(), SinkError> {
        self.send(Chunk::of(owner, data), batched)
    }

    fn no_body(&self) -> bool {
        self.no_body
    }

    fn log_vars(&mut self, vars: Vec<(String, String)>) {
        self.ex.push(Event::LogVars(vars));
    }

    fn file(&mut self, file: crate::python::file_wrapper::FileBody) -> Result<(), SinkError> {
        if self.ex.is_cancelled() {
            return Err(SinkError::Closed);
        }
        self.ex.push(Event::File(file));
        Ok(())
    }
}

impl ThreadSink {
    /// Hands a piece of body to the loop; `batched` (more is at hand): staged for the next
    /// hand-over when it fits.
    fn send(&mut self, chunk: Chunk, batched: bool) -> Result<(), SinkError> {
        let ex = &self.ex;
        if ex.is_cancelled() {
            return Err(SinkError::Closed);
        }
        let chunk = if batched {
            match ex.stage(Event::Body(chunk)) {
                Ok(()) => return Ok(()),
                Err(Event::Body(chunk)) => chunk,
                Err(_) => unreachable!("stage gives back the event it was given"),
            }
        } else {
            chunk
        };
        // The loop drops the shared chunks nginx has sent without the GIL: pyo3 releases
        // them when a thread attaches, as this (attached) one does here, so a long response
        // frees its pieces as it goes.
        Python::attach(|_| ());
        // Only a full queue is waited for, and only then is the interpreter released.
        let len = chunk.len();
        let fits = ex.has_room(len) || Python::attach(|py| py.detach(|| ex.wait_for_room(len)));
        if !fits {
            return Err(SinkError::Closed);
        }
        ex.push(Event::Body(chunk));
        Ok(())
    }
}
