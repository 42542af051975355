#![forbid(unsafe_code)]
//! The worker's Python threads: a bounded job queue, `wsgi_threads` threads that run
//! applications, and a watchdog that interrupts applications past `wsgi_timeout`.
//!
//! Threads stay attached to the interpreter and detach only while they wait for work (so the
//! GIL is free for the others, and no thread state is created per request).
//!
//! Adaptive concurrency: `wsgi_threads` is the most threads that run; how many are awake
//! follows what the application does. A thread that finishes a job takes the next one without
//! sleeping, so an application that computes (hello world) is served by one awake thread:
//! more would only take the GIL from each other (and wake each other, a futex each time). A
//! sleeping thread is woken when no thread is awake, or when the watchdog (every `WATCH`)
//! finds every thread that runs a job asleep in the kernel (blocked in I/O, a sleep, a lock:
//! the GIL is free) while jobs have waited `RAMP`; it then wakes one thread per waiting job,
//! and until it finds the queue keeping up again, new jobs that no awake thread is free for
//! wake sleepers at once. A woken thread counts as awake from the wake-up on, so a burst of
//! jobs wakes one thread, not one each. A CPU-bound thread is runnable, never asleep, so
//! computing applications stay on one thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::log::{Log, LogWrite, NGX_LOG_ERR};
use crate::python::exchange::{Event, Exchange, ThreadSink};
use crate::python::parts::RequestParts;
use crate::python::wsgi::{self, Outcome};

pub struct Job {
    pub ex: Arc<Exchange>,
    pub parts: RequestParts,
    pub app: usize,
    /// The response has no body whatever its status (HEAD, a header-only subrequest).
    pub no_body: bool,
    /// The request's log takes debug lines: the thread reports what it does.
    pub trace: bool,
    /// When the job was queued (`$wsgi_queue_time` is the wait for a thread).
    pub queued: Instant,
}

/// A request past its timeout: log its stack, raise in its thread.
struct Interrupt {
    ex: Arc<Exchange>,
    message: String,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Threads waiting for work on `work` and not yet woken: wake-ups (a futex call each)
    /// only when some are.
    sleepers: usize,
    /// Wake-ups sent and not yet taken by a thread: a woken thread counts as awake from the
    /// moment it is woken, so jobs queued before it runs do not wake more threads.
    woken: usize,
    interrupts: VecDeque<Interrupt>,
    shutdown: bool,
}

pub struct Pool {
    q: Mutex<Queue>,
    work: Condvar,
    watchdog: Condvar,
    exited: Condvar,
    capacity: usize,
    threads: usize,
    pub busy: AtomicUsize,
    /// The queue's length, kept beside it for readers that need no lock.
    queued: AtomicUsize,
    running: AtomicUsize,
    /// Kernel thread ids of the threads running a job now (0: none), by thread.
    working: Vec<std::sync::atomic::AtomicI32>,
    /// The watchdog's last finding: the application blocks (running threads were asleep in
    /// the kernel while jobs waited). While it holds, a job that finds no free awake thread
    /// wakes a sleeper at once.
    blocking: std::sync::atomic::AtomicBool,
}

/// Jobs have waited this long (and every running thread is blocked): wake more threads.
const RAMP: Duration = Duration::from_millis(1);
/// A blocking verdict stands until jobs have not waited for this long.
const SETTLE: Duration = Duration::from_millis(100);
/// How often the watchdog looks at the queue.
const WATCH: Duration = Duration::from_millis(2);

fn aged(q: &Queue, limit: Duration) -> bool {
    q.jobs.front().is_some_and(|j| j.queued.elapsed() >= limit)
}

static POOL: OnceLock<Arc<Pool>> = OnceLock::new();
static THREADED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn get() -> Option<&'static Arc<Pool>> {
    POOL.get()
}

/// The configuration asks for Python threads (`wsgi_threads` > 0), whether or not they
/// started.
pub fn threaded() -> bool {
    THREADED.load(Ordering::Relaxed)
}

impl Pool {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.q.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a job; gives it back when `wsgi_queue` requests are already waiting.
    #[allow(clippy::result_large_err)] // the job goes back to its caller, who finalizes it
    pub fn try_submit(&self, job: Job) -> Result<(), Job> {
        let mut q = self.lock();
        let busy = self.busy.load(Ordering::Acquire).min(self.threads);
        let idle = self.threads - busy;
        if q.shutdown || q.jobs.len() >= self.capacity + idle {
            return Err(job);
        }
        q.jobs.push_back(job);
        self.queued.store(q.jobs.len(), Ordering::Relaxed);
        // An awake thread takes it, at once or after its job; a sleeper is woken when no
        // thread is awake, or when the application blocks and the awake ones are not enough.
        let awake = self.threads.saturating_sub(q.sleepers);
        let free = awake.saturating_sub(busy);
        let wake = q.sleepers > 0
            && if self.blocking.load(Ordering::Relaxed) {
                free < q.jobs.len()
            } else {
                awake == 0
            };
        if wake {
            Self::wake_one(&mut q);
        }
        drop(q);
        if wake {
            self.work.notify_one();
        }
        Ok(())
    }

    /// Counts a sleeping thread as woken; the caller then notifies `work` once.
    fn wake_one(q: &mut Queue) {
        q.sleepers -= 1;
        q.woken += 1;
    }

    /// Jobs waiting for a thread (without the lock: for figures and messages).
    pub fn waiting(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    pub fn interrupt(&self, ex: Arc<Exchange>, message: String) {
        self.lock().interrupts.push_back(Interrupt { ex, message });
        self.watchdog.notify_one();
    }

    fn next_job(&self) -> Option<Job> {
        let mut q = self.lock();
        loop {
            if let Some(job) = q.jobs.pop_front() {
                self.queued.store(q.jobs.len(), Ordering::Relaxed);
                let busy = self.busy.fetch_add(1, Ordering::AcqRel) + 1;
                crate::stats::set_load(busy, q.jobs.len());
                return Some(job);
            }
            if q.shutdown {
                return None;
            }
            q.sleepers += 1;
            loop {
                q = self.work.wait(q).unwrap_or_else(|e| e.into_inner());
                // Whichever thread returns takes a wake-up; one that finds none was not woken
                // (a spurious return) and waits on, still counted as a sleeper.
                if q.woken > 0 || q.shutdown {
                    q.woken = q.woken.saturating_sub(1);
                    break;
                }
            }
        }
    }

    /// The next job for a thread that just finished one.
    fn try_next_job(&self) -> Option<Job> {
        if self.queued.load(Ordering::Relaxed) == 0 {
            // `next_job` looks again under the lock.
            return None;
        }
        let mut q = self.lock();
        let job = q.jobs.pop_front()?;
        self.queued.store(q.jobs.len(), Ordering::Relaxed);
        let busy = self.busy.fetch_add(1, Ordering::AcqRel) + 1;
        crate::stats::set_load(busy, q.jobs.len());
        Some(job)
    }

    /// The watchdog's look at the queue: jobs have waited and every thread running a job is
    /// asleep in the kernel (so the GIL is free for more), or none runs one: wake a sleeping
    /// thread per waiting job.
    fn starved(&self, last_aged: &mut Instant) {
        let q = self.lock();
        if !aged(&q, RAMP) {
            // The awake threads keep up; the verdict lasts until they have for `SETTLE`
            // (cleared as soon as they do, the threads the application needs would go to
            // sleep and be woken again every few milliseconds).
            if last_aged.elapsed() >= SETTLE {
                self.blocking.store(false, Ordering::Relaxed);
            }
            return;
        }
        *last_aged = Instant::now();
        if q.sleepers == 0 {
            return;
        }
        drop(q);
        let blocked = self
            .working
            .iter()
            .map(|t| t.load(Ordering::Acquire))
            .filter(|&tid| tid != 0)
            .all(|tid| {
                // The state letter after the command name's closing parenthesis: S or D asleep,
                // R runnable (computing, or waiting for a core).
                std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))
                    .ok()
                    .and_then(|stat| {
                        stat.rsplit_once(')')
                            .and_then(|(_, rest)| rest.trim_start().chars().next())
                    })
                    .is_some_and(|state| state == 'S' || state == 'D')
            });
        self.blocking.store(blocked, Ordering::Relaxed);
        if blocked {
            let mut q = self.lock();
            let n = q.jobs.len().min(q.sleepers);
            for _ in 0..n {
                Self::wake_one(&mut q);
            }
            drop(q);
            for _ in 0..n {
                self.work.notify_one();
            }
        }
    }

    /// The next interrupt for the watchdog; between them it looks at the queue every `WATCH`
    /// (`last_aged`: when it last found jobs waiting `RAMP`).
    fn next_interrupt(&self, last_aged: &mut Instant) -> Option<Interrupt> {
        let mut q = self.lock();
        loop {
            if let Some(i) = q.interrupts.pop_front() {
                return Some(i);
            }
            if q.shutdown {
                return None;
            }
            let (next, _) = self
                .watchdog
                .wait_timeout(q, WATCH)
                .unwrap_or_else(|e| e.into_inner());
            drop(next);
            self.starved(last_aged);
            q = self.lock();
        }
    }

    fn exit(&self) {
        let _q = self.lock();
        self.running.fetch_sub(1, Ordering::AcqRel);
        self.exited.notify_all();
    }
}

/// Records that the configuration asks for Python threads (before they start, or fail to).
pub fn mark_threaded() {
    THREADED.store(true, Ordering::Relaxed);
}

pub fn start(threads: usize, capacity: usize) -> std::io::Result<()> {
    crate::python::interp::with_signals_blocked(|| spawn_all(threads, capacity))
}

fn spawn_all(threads: usize, capacity: usize) -> std::io::Result<()> {
    let pool = Arc::new(Pool {
        q: Mutex::new(Queue::default()),
        work: Condvar::new(),
        watchdog: Condvar::new(),
        exited: Condvar::new(),
        capacity,
        threads,
        busy: AtomicUsize::new(0),
        queued: AtomicUsize::new(0),
        running: AtomicUsize::new(0),
        working: (0..threads)
            .map(|_| std::sync::atomic::AtomicI32::new(0))
            .collect(),
        blocking: std::sync::atomic::AtomicBool::new(false),
    });
    // Published only once every thread runs: requests never wait for threads that failed to
    // start (the handler answers 503 without a pool).
    let spawned = (|| -> std::io::Result<()> {
        for i in 0..threads {
            let p = pool.clone();
            pool.running.fetch_add(1, Ordering::AcqRel);
            let started = std::thread::Builder::new()
                .name(format!("wsgi-{i}"))
                .spawn(move || {
                    Python::attach(|py| app_thread(py, &p, i));
                    p.exit();
                });
            if let Err(e) = started {
                pool.running.fetch_sub(1, Ordering::AcqRel);
                return Err(e);
            }
        }
        let p = pool.clone();
        pool.running.fetch_add(1, Ordering::AcqRel);
        let started = std::thread::Builder::new()
            .name("wsgi-watchdog".into())
            .spawn(move || {
                Python::attach(|py| watchdog_thread(py, &p));
                p.exit();
            });
        if let Err(e) = started {
            pool.running.fetch_sub(1, Ordering::AcqRel);
            return Err(e);
        }
        Ok(())
    })();
    if let Err(e) = spawned {
        let mut q = pool.lock();
        q.shutdown = true;
        pool.work.notify_all();
        pool.watchdog.notify_all();
        drop(q);
        return Err(e);
    }
    let _ = POOL.set(pool);
    Ok(())
}

/// Asks every thread to stop once the queue is empty and waits up to `grace` for them.
/// Returns false if some are still running (stuck inside an application).
pub fn stop(grace: Duration) -> bool {
    let Some(pool) = POOL.get() else { return true };
    let deadline = Instant::now() + grace;
    let mut q = pool.lock();
    q.shutdown = true;
    pool.queued.store(0, Ordering::Relaxed);
    for job in q.jobs.drain(..) {
        job.ex.cancel();
    }
    pool.work.notify_all();
    pool.watchdog.notify_all();
    while pool.running.load(Ordering::Acquire) > 0 {
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        q = pool
            .exited
            .wait_timeout(q, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    true
}

fn app_thread(py: Python<'_>, pool: &Pool, index: usize) {
    let tid = crate::python::interp::kernel_thread_id();
    let ident: u64 = py
        .import("threading")
        .and_then(|t| t.call_method0("get_ident"))
        .and_then(|i| i.extract())
        .unwrap_or(0);
    // While jobs are waiting, a thread goes from one to the next without releasing the
    // interpreter; it detaches only to wait for work.
    while let Some(job) = pool
        .try_next_job()
        .or_else(|| py.detach(|| pool.next_job()))
    {
        let ex = job.ex.clone();
        ex.thread_ident.store(ident, Ordering::Release);
        pool.working[index].store(tid, Ordering::Release);
        let t0 = Instant::now();
        let queue_time = t0.saturating_duration_since(job.queued);
        let outcome = run_job(py, job);
        let app_time = t0.elapsed();
        pool.working[index].store(0, Ordering::Release);
        ex.thread_ident.store(0, Ordering::Release);
        if ex.interrupted.load(Ordering::Acquire) {
            // A timeout exception that the application did not reach must not fire in
            // the next request this thread runs.
            crate::python::interp::clear_async_exc(ident);
        }
        let busy = pool.busy.fetch_sub(1, Ordering::AcqRel) - 1;
        crate::stats::set_load(busy, pool.waiting());
        ex.push(Event::Done(outcome, app_time, queue_time));
    }
}

fn run_job(py: Python<'_>, job: Job) -> Outcome {
    let Job {
        ex,
        parts,
        app,
        no_body,
        trace,
        ..
    } = job;
    if trace {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("?");
        ex.push(Event::Log(
            crate::log::NGX_LOG_DEBUG,
            format!("wsgi thread {name}: exchange {} runs", ex.id),
        ));
    }
    if ex.is_cancelled() {
        return Outcome::ClientGone;
    }
    let Some(worker) = crate::python::interp::worker() else {
        return Outcome::FailedEarly;
    };
    let sink = Box::new(ThreadSink {
        ex: ex.clone(),
        no_body,
    });
    wsgi::serve_to_end(py, worker, &worker.apps[app], parts, sink, Arc::new(ex))
}

fn watchdog_thread(py: Python<'_>, pool: &Pool) {
    let mut last_aged = Instant::now();
    while let Some(Interrupt { ex, message }) = py.detach(|| pool.next_interrupt(&mut last_aged)) {
        let ident = ex.thread_ident.load(Ordering::Acquire);
        if ident == 0 {
            // Finished in the meantime.
            continue;
        }
        let stack = (|| -> PyResult<String> {
            let frames = py.import("sys")?.call_method0("_current_frames")?;
            let Some(frame) = frames.get_item(ident).ok() else {
                return Ok("(no Python frame)".into());
            };
            let lines = py
                .import("traceback")?
                .call_method1("format_stack", (frame,))?;
            pyo3::types::PyString::new(py, "")
                .call_method1("join", (lines,))?
                .extract()
        })()
        .unwrap_or_else(|e| format!("(stack unavailable: {e})"));
        Log::cycle().write(
            NGX_LOG_ERR,
            &format!("{message}; the application's stack:\n{}", stack.trim_end()),
        );
        // Under the GIL the thread cannot move on to another request between the check
        // above and the raise below.
        if ex.thread_ident.load(Ordering::Acquire) == ident {
            ex.interrupted.store(true, Ordering::Release);
            crate::python::interp::raise_timeout(py, ident);
        }
    }
}
