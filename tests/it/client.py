"""A real-client driver for the integration tests: Python's smtplib, as applications use it.

Prints one line per message: "OK <queue id>" or "ERR <stage> <code> <text>".
"""
import argparse, smtplib, ssl, sys, time

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, required=True)
p.add_argument("--mode", choices=["plain", "ssl", "starttls"], default="plain")
p.add_argument("--auth", choices=["none", "plain", "login", "default"], default="none")
p.add_argument("--user", default="alice@example.com")
p.add_argument("--password", default="correct horse")
p.add_argument("--sender", default="alice@example.com")
p.add_argument("--header-from", default=None)
p.add_argument("--to", action="append", default=[])
p.add_argument("--size", type=int, default=200)
p.add_argument("--count", type=int, default=1)
p.add_argument("--seconds", type=float, default=0, help="keep sending until this many seconds passed (0: use --count)")
p.add_argument("--mail-options", default="")
p.add_argument("--reconnect", action="store_true", help="one connection per message")
p.add_argument("--tag", default=None, help="give message i the Message-ID <TAG-i@soak.test> and print it after the queue id")
a = p.parse_args()
rcpts = a.to or ["bob@example.net"]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE


def connect():
    if a.mode == "ssl":
        s = smtplib.SMTP_SSL(a.host, a.port, context=ctx, timeout=30)
    else:
        s = smtplib.SMTP(a.host, a.port, timeout=30)
    s.ehlo("client.test")
    if a.mode == "starttls":
        s.starttls(context=ctx)
        s.ehlo("client.test")
    if a.auth == "plain":
        s.user, s.password = a.user, a.password
        s.auth("PLAIN", s.auth_plain, initial_response_ok=True)
    elif a.auth == "login":
        s.user, s.password = a.user, a.password
        s.auth("LOGIN", s.auth_login, initial_response_ok=False)
    elif a.auth == "default":
        s.login(a.user, a.password)
    return s


def message(i):
    hdr_from = a.header_from or a.sender
    head = f"From: {hdr_from}\r\nTo: {', '.join(rcpts)}\r\nSubject: test {i}\r\n\r\n"
    if a.tag:
        head = f"Message-ID: {msgid(i)}\r\n" + head
    line = ("x" * 70 + "\r\n")
    body = (line * (a.size // len(line) + 1))[: max(a.size - len(head), 0)]
    return (head + body).encode()


def msgid(i):
    return f"<{a.tag}-{i}@soak.test>"


def out(s):
    print(s, flush=True)


s = None
i = 0
deadline = time.time() + a.seconds
while (a.seconds and time.time() < deadline) or (not a.seconds and i < a.count):
    try:
        if s is None:
            s = connect()
        opts = a.mail_options.split() if a.mail_options else []
        code, resp = s.mail(a.sender, opts)
        if code != 250:
            out(f"ERR mail {code} {resp.decode(errors='replace')}")
            s.rset()
            i += 1
            continue
        ok = 0
        for r in rcpts:
            code, resp = s.rcpt(r)
            if code == 250:
                ok += 1
            else:
                out(f"ERR rcpt {code} {resp.decode(errors='replace')}")
        if ok == 0:
            s.rset()
            i += 1
            continue
        code, resp = s.data(message(i))
        text = resp.decode(errors="replace")
        if code == 250:
            out("OK " + text.rsplit(" ", 1)[-1] + (" " + msgid(i) if a.tag else ""))
        else:
            out(f"ERR data {code} {text}")
        if a.reconnect:
            s.quit()
            s = None
    except smtplib.SMTPResponseException as e:
        out(f"ERR {type(e).__name__} {e.smtp_code} {e.smtp_error.decode(errors='replace')}")
        s = None
    except (OSError, smtplib.SMTPException) as e:
        out(f"ERR conn 0 {type(e).__name__}: {e}")
        s = None
        if a.seconds:
            time.sleep(0.05)
    i += 1
if s is not None:
    try:
        s.quit()
    except Exception:
        pass
