//! Ctrl-C: the first SIGINT (or SIGTERM) cancels the run (running stages are asked to
//! stop, nothing new starts, the record is written); a second one exits at once.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use itera_engine::stage::CancelToken;

static SIGNALS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(_: libc::c_int) {
    if SIGNALS.fetch_add(1, Ordering::SeqCst) >= 1 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
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
        .spawn(move || loop {
            if SIGNALS.load(Ordering::SeqCst) > 0 {
                tracing::warn!("interrupted: stopping running stages");
                watched.cancel();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        })
        .expect("can start the signal thread");
    token
}
