//! The clients of the product's guide, for real: Django's SMTP backend (implicit TLS, port 465
//! role) and Nodemailer (STARTTLS, port 587 role), each trusting ringmta's generated
//! certificate, delivering through ringmta to the sink.

use std::process::Command;

use crate::harness::{PASSWORD, Server, Sink};

fn routed(sink: &Sink) -> String {
    format!("[delivery]\nroutes = {{ \"*\" = \"{}\" }}\n", sink.addr)
}

#[test]
fn django_send_mail_over_implicit_tls() {
    let sink = Sink::start();
    let s = Server::start(&routed(&sink));
    let cert = s.dir.join("tls/cert.pem");
    let script = r#"
import sys
try:
    import django
    from django.conf import settings
except ImportError:
    print("SKIP"); sys.exit(0)
port, password = int(sys.argv[1]), sys.argv[2]
settings.configure(
    EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
    EMAIL_HOST="localhost", EMAIL_PORT=port, EMAIL_USE_SSL=True,
    EMAIL_HOST_USER="alice@example.com", EMAIL_HOST_PASSWORD=password, EMAIL_TIMEOUT=20,
)
django.setup()
from django.core.mail import send_mail
n = send_mail("Password reset", "Click the link.", "alice@example.com", ["bob@example.net"])
print("SENT", n)
"#;
    let out = Command::new("python3")
        .args(["-c", script, &s.port("submissions").to_string(), PASSWORD])
        .env("SSL_CERT_FILE", &cert)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    if text.starts_with("SKIP") {
        ringmta::testkit::skip("Django is not installed (pip install django)");
        return;
    }
    assert!(
        out.status.success() && text.contains("SENT 1"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let msgs = sink.wait_for("the Django message", 30, |m| !m.is_empty());
    assert!(msgs[0].contains("Subject: Password reset"), "{}", msgs[0]);
    assert!(msgs[0].contains("with ESMTPSA"), "{}", msgs[0]);
}

#[test]
fn nodemailer_over_starttls() {
    let modules = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/node/node_modules");
    if !std::path::Path::new(modules).join("nodemailer").exists() || !crate::harness::have("node") {
        ringmta::testkit::skip(
            "node and nodemailer are needed (npm install --prefix tests/it/node)",
        );
        return;
    }
    let sink = Sink::start();
    let s = Server::start(&routed(&sink));
    let cert = s.dir.join("tls/cert.pem");
    let script = r#"
const nodemailer = require('nodemailer');
const fs = require('fs');
const [port, password, ca] = process.argv.slice(1);
const transporter = nodemailer.createTransport({
  host: 'localhost', port: Number(port), secure: false, requireTLS: true,
  auth: { user: 'alice@example.com', pass: password },
  tls: { ca: fs.readFileSync(ca) },
});
transporter.sendMail({
  from: '"Alice" <alice@example.com>', to: 'bob@example.net',
  subject: 'Hello from Nodemailer', text: 'Hello world!', html: '<b>Hello world!</b>',
}).then(info => { console.log('SENT', info.response); })
  .catch(err => { console.error('ERROR', err); process.exit(1); });
"#;
    let out = Command::new("node")
        .args(["-e", script, &s.port("submission").to_string(), PASSWORD])
        .arg(&cert)
        .env("NODE_PATH", modules)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("SENT 250 2.0.0 Ok: queued as "), "{text}");
    let msgs = sink.wait_for("the Nodemailer message", 30, |m| !m.is_empty());
    assert!(
        msgs[0].contains("Subject: Hello from Nodemailer"),
        "{}",
        msgs[0]
    );
    assert!(msgs[0].contains("multipart/alternative"), "{}", msgs[0]);
}
