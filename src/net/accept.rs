//! Accept loops: several accepts in flight per listener, admission asked of the application,
//! a refused client told why (the reply `smtp` maps) and closed.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use crate::smtp::PortRole;
use crate::smtp::Reply;

use super::Application;

/// Accept operations kept in flight per listener and core: with one, a busy event loop accepts
/// at most one connection per turn and new clients wait in the backlog.
pub const ACCEPTS_IN_FLIGHT: usize = 16;

/// Starts the accept loops of one listener on the current runtime.
pub fn spawn_listener<A: Application>(
    app: &Rc<A>,
    listener: std::net::TcpListener,
    role: PortRole,
) {
    let listener = Rc::new(tokio_uring::net::TcpListener::from_std(listener));
    for _ in 0..ACCEPTS_IN_FLIGHT {
        tokio_uring::spawn(accept_loop(Rc::clone(app), Rc::clone(&listener), role));
    }
}

async fn accept_loop<A: Application>(
    app: Rc<A>,
    listener: Rc<tokio_uring::net::TcpListener>,
    role: PortRole,
) {
    let mut shutdown = app.shutdown();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (stream, peer): (tokio_uring::net::TcpStream, SocketAddr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE/ENFILE: back off instead of spinning; the listener stays open.
                app.accept_failed(&e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ip = peer.ip();
        if let Err(why) = app.admit(ip) {
            let mut text = Vec::new();
            Reply::from(&why).encode(&mut text);
            tokio_uring::spawn(async move {
                let _ = stream.set_nodelay(true);
                let _ = stream.write_all(text).await;
                let _ = stream.shutdown(std::net::Shutdown::Both);
            });
            continue;
        }
        let app = Rc::clone(&app);
        tokio_uring::spawn(async move {
            super::conn::serve(Rc::clone(&app), stream, peer, role).await;
            app.release(ip);
        });
    }
}
