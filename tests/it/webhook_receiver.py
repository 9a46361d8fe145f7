"""A webhook receiver on loopback for the tests: checks every post's X-Ringmta-Signature.

Usage: webhook_receiver.py SECRET FAIL_FIRST LOG [CERT KEY] -- binds 127.0.0.1 port 0 (over
TLS with CERT and KEY when given) and prints "webhook listening on PORT". Answers 500 to the first FAIL_FIRST posts, then 204 (No Content,
as many receivers do). For each post
it appends to LOG one line per event, "<event_id> <event>", after checking the signature
(HMAC-SHA256 over "<t>.<body>" with SECRET) and that t is within 5 minutes; a post that fails
the check gets 401 and writes "BAD <reason>". Stops by itself after 600 seconds.
"""
import hashlib, hmac, http.server, json, ssl, sys, threading, time

secret, fail_first, log = sys.argv[1].encode(), int(sys.argv[2]), sys.argv[3]
posts = {"n": 0}
lock = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, code):
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with lock:
            posts["n"] += 1
            n = posts["n"]
        if n <= fail_first:
            return self.answer(500)
        sig = dict(p.split("=", 1) for p in self.headers.get("X-Ringmta-Signature", "").split(",") if "=" in p)
        want = hmac.new(secret, f"{sig.get('t', '')}.".encode() + body, hashlib.sha256).hexdigest()
        fresh = abs(time.time() - int(sig.get("t", "0"))) < 300
        with open(log, "a") as f:
            if not hmac.compare_digest(want, sig.get("v1", "")) or not fresh:
                f.write(f"BAD signature {sig}\n")
                return self.answer(401)
            for e in json.loads(body)["events"]:
                f.write(f"{e['event_id']} {e['event']}\n")
        self.answer(204)

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
if len(sys.argv) > 5:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[4], sys.argv[5])
    server.socket = context.wrap_socket(server.socket, server_side=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(f"webhook listening on {server.server_address[1]}", flush=True)
time.sleep(600)
