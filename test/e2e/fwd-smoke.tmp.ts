import { connect } from "node:net";
import { OpenShell } from "../../src/api/index.js";
import { TestEnv, uniqueName } from "../helpers/cli.js";

const env = new TestEnv("openshell-fwd-smoke-");
try {
  await env.startGateway(process.argv[2] === "relay" ? { OPENSHELL_SSH_VIA_RELAY: "1", ...(process.env.NOPATCH ? { OPENSHELL_NO_PATCHES: process.env.NOPATCH } : {}) } : {});
  process.env.XDG_CONFIG_HOME = env.configHome;
  process.env.XDG_STATE_HOME = env.stateHome;
  const client = await OpenShell.connect();
  const t0 = Date.now();
  const sandbox = await client.create({ name: uniqueName("fwd"), command: ["python3", "-c", `
import socket, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 7000)); s.listen(128)
def serve(c):
    data = b""
    while True:
        d = c.recv(65536)
        if not d: break
        c.sendall(d)
    c.shutdown(socket.SHUT_WR); c.close()
def down(c):
    c.sendall(b"y" * 50000000); c.close()
def up(c):
    n = 0
    while True:
        d = c.recv(65536)
        if not d: break
        n += len(d)
    c.sendall(str(n).encode()); c.close()
def loop(s, fn):
    while True:
        c, _ = s.accept(); threading.Thread(target=fn, args=(c,), daemon=True).start()
for port, fn in ((7002, down), (7003, up)):
    t = socket.socket(); t.bind(("127.0.0.1", port)); t.listen(16)
    threading.Thread(target=loop, args=(t, fn), daemon=True).start()
loop(s, serve)
`] });
  console.log("created", Date.now() - t0);
  if (process.env.SSHECHO) {
    const proc = await sandbox.spawn("cat");
    let n = 0;
    proc.stdout.on("data", (d: Buffer) => { n += d.length; });
    const t = Date.now();
    proc.stdin.end(Buffer.alloc(20_000_000, 3));
    const r = await proc.wait();
    console.log("ssh echo", n, r, Date.now() - t);
  }
  const errors: string[] = [];
  const fwd = await sandbox.forward(7000, { onConnectionError: (e) => errors.push(e.message) });
  console.log("forward at", fwd.url);
  const roundTrip = (payload: Buffer) => new Promise<Buffer>((resolve, reject) => {
    const sock = connect(fwd.port, "127.0.0.1");
    const got: Buffer[] = [];
    sock.on("data", (d) => got.push(d));
    sock.on("end", () => resolve(Buffer.concat(got)));
    sock.on("error", reject);
    sock.end(payload);
  });
  for (let i = 0; i < 3; i++) {
    const r = await roundTrip(Buffer.from(`hello ${i}`));
    console.log("echo", r.toString());
  }
  for (const [port, payload] of [[7002, Buffer.from("")], [7003, Buffer.alloc(50_000_000, 1)], [7000, Buffer.alloc(1_000_000, 2)]] as const) {
    const f = await sandbox.forward(port);
    const t = Date.now();
    const got = await new Promise<Buffer>((resolve, reject) => {
      const sock = connect(f.port, "127.0.0.1");
      const chunks: Buffer[] = [];
      sock.on("data", (d) => chunks.push(d));
      sock.on("end", () => resolve(Buffer.concat(chunks)));
      sock.on("error", reject);
      sock.end(payload);
    });
    console.log(port, got.length > 100 ? got.length : got.toString(), Date.now() - t, "ms");
    await f.close();
  }
  const big = Buffer.alloc(50_000_000, 7);
  const t1 = Date.now();
  const rb = await roundTrip(big);
  console.log("big", rb.length, Date.now() - t1, "ms");
  const fwd2 = await sandbox.forward(7001, { onConnectionError: (e) => errors.push(e.message) });
  const r2 = await roundTrip.call(null, Buffer.from("x")).catch((e) => e);
  const refused = await new Promise((resolve) => { const s = connect(fwd2.port, "127.0.0.1"); s.on("data", () => {}); s.on("end", () => resolve("end")); s.on("error", (e) => resolve(String(e))); });
  console.log("refused:", refused, errors);
  await fwd.close(); await fwd2.close();
  await sandbox.delete();
  client.close();
} finally {
  if (!process.env.KEEP) await env.dispose(); else console.log(env.root);
}
