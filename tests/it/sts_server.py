"""A real HTTPS server on loopback that serves MTA-STS policies (RFC 8461) for the delivery tests.

Usage: sts_server.py CERT KEY POLICIES_JSON LOG -- binds 127.0.0.1 port 0 and prints
"sts listening on PORT". POLICIES_JSON maps a policy host name (mta-sts.<domain>) to the text
served at /.well-known/mta-sts.txt; any other host or path gets 404. Each request's host and
path are appended to LOG;
a POST (a TLS report) is answered 200 and appended to LOG.posts as a JSON line. Stops by
itself after 600 seconds so a crashed test never leaves it running.
"""
import base64, http.server, json, ssl, sys, threading, time

cert, key, policies, log = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        with open(log, "a") as f:
            f.write(f"{host} {self.path}\n")
        body = policies.get(host)
        if self.path != "/.well-known/mta-sts.txt" or body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        # TLS reports posted to an https rua (RFC 8460 §5.4): one JSON line each in LOG.posts.
        host = (self.headers.get("Host") or "").split(":")[0].lower()
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with open(log + ".posts", "a") as f:
            f.write(json.dumps({"host": host, "path": self.path,
                                "content_type": self.headers.get("Content-Type"),
                                "body_base64": base64.b64encode(body).decode()}) + "\n")
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(f"sts listening on {server.server_address[1]}", flush=True)
time.sleep(600)
