//! Ctrl-C: the first SIGINT (or SIGTERM) cancels the run (running stages are asked to
//! stop, nothing new starts, the record is written); a second one stops at once: the
//! registered [`on_hard_stop`] hook writes the record as interrupted and the process
//! exits 130 (each shell stage's supervisor then kills its command's process group). A
//! third one exits immediately, whatever the hook is doing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use itera_engine::stage::CancelToken;

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

type Hook = Box<dyn Fn() + Send>;
static HARD_STOP: Mutex<Option<Hook>> = Mutex::new(None);

extern "C" fn on_signal(_: libc::c_int) {
    if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 2 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// Runs `hook` on a second Ctrl-C, just before the process exits with 130.
pub fn on_hard_stop(hook: impl Fn() + Send + 'static) {
    *HARD_STOP.lock().unwrap_or_else(|p| p.into_inner()) = Some(Box::new(hook));
}

/// Installs the handlers and returns a token that is cancelled on the first signal.
pub fn cancel_on_signal() -> CancelToken {
    let token = CancelToken::default();
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only touches an atomic and calls _exit.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
    let watched = token.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut cancelled = false;
            loop {
                let n = SIGNALS.load(Ordering::SeqCst);
                if n > 0 && !cancelled {
                    tracing::warn!("interrupted: stopping running stages");
                    watched.cancel();
                    cancelled = true;
                }
                if n > 1 {
                    eprintln!("interrupted again: stopping now");
                    if let Some(hook) = HARD_STOP.lock().unwrap_or_else(|p| p.into_inner()).as_ref()
                    {
                        hook();
                    }
                    // SAFETY: _exit ends the process without running destructors; the
                    // record is written and every shell stage's supervisor kills its group.
                    unsafe { libc::_exit(130) };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
        .expect("can start the signal thread");
    token
}
