// An OpenSSH ProxyCommand for tests: bridges this process's stdin/stdout to
// the Unix socket named by the first argument, so the system `ssh`, `sftp`
// and `scp` can reach an agent's SSH server the way the relay would.
//
//   ssh -o ProxyCommand="node test/helpers/unix-socket-proxy.mjs /tmp/x/ssh.sock" host

import net from "node:net";

const socketPath = process.argv[2];
if (!socketPath) {
  process.stderr.write("usage: unix-socket-proxy.mjs <socket path>\n");
  process.exit(2);
}
const socket = net.connect(socketPath);
socket.on("error", (error) => {
  process.stderr.write(`unix-socket-proxy: ${socketPath}: ${error.message}\n`);
  process.exit(1);
});
process.stdin.pipe(socket);
socket.pipe(process.stdout);
// ssh keeps our stdin open; once the server hung up and its last bytes are
// written out there is nothing left to do.
process.stdout.on("finish", () => process.exit(0));
