"""A real DNS server on loopback for the delivery tests (dnslib over UDP and TCP).

Usage: dns_server.py ZONE_JSON   -- binds 127.0.0.1 port 0 and prints "dns listening on PORT".
ZONE_JSON maps names to either "SERVFAIL" or {"MX": [[pref, "host."]], "A": ["127.0.0.1"],
"TXT": ["v=DKIM1; ..."], "TTL": 60}. "@PATH" instead reads the zone from that file at every
query, so that a test can change it.
Unknown names get NXDOMAIN; known names without the asked type get NOERROR with no answer.
Stops by itself after --ttl seconds (default 600) so a crashed test never leaves it running.
"""
import json, os, socket, sys, threading, time
try:
    from dnslib import DNSRecord, RR, QTYPE, RCODE, MX, A, TXT
    from dnslib.server import DNSServer, BaseResolver
except ImportError as e:
    print(f"SKIP: dnslib is not installed ({e})", flush=True)
    sys.exit(77)

def load_zone():
    text = open(sys.argv[1][1:]).read() if sys.argv[1].startswith("@") else sys.argv[1]
    return {k.lower().rstrip("."): v for k, v in json.loads(text).items()}


zone = load_zone()
ttl = float(sys.argv[2]) if len(sys.argv) > 2 else 600


class Resolver(BaseResolver):
    def resolve(self, request, handler):
        reply = request.reply()
        qname = str(request.q.qname).lower().rstrip(".")
        qtype = QTYPE[request.q.qtype]
        entry = (load_zone() if sys.argv[1].startswith("@") else zone).get(qname)
        if entry is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if entry == "SERVFAIL":
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        rr_ttl = entry.get("TTL", 60)
        if qtype == "MX":
            for pref, host in entry.get("MX", []):
                reply.add_answer(RR(request.q.qname, QTYPE.MX, rdata=MX(host, pref), ttl=rr_ttl))
        if qtype == "A":
            for ip in entry.get("A", []):
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=rr_ttl))
        if qtype == "TXT":
            for text in entry.get("TXT", []):
                # Long TXT values (DKIM keys) are split into 255-byte character strings.
                parts = [text[i:i + 255].encode() for i in range(0, len(text), 255)]
                reply.add_answer(RR(request.q.qname, QTYPE.TXT, rdata=TXT(parts), ttl=rr_ttl))
        return reply


# Pick a port free for both UDP and TCP.
for _ in range(50):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    try:
        udp = DNSServer(Resolver(), port=port, address="127.0.0.1")
        tcp = DNSServer(Resolver(), port=port, address="127.0.0.1", tcp=True)
        break
    except OSError:
        continue
udp.start_thread()
tcp.start_thread()
print(f"dns listening on {port}", flush=True)
# dnslib logs every request to stdout; the test stops reading after the first line.
sys.stdout = open(os.devnull, "w")
deadline = time.time() + ttl
while time.time() < deadline:
    time.sleep(0.5)
