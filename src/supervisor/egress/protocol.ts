// The few bytes the agent's forwarder and the supervisor's egress proxy
// exchange on each Unix connection before the HTTP proxy protocol starts:
//
//   forwarder → proxy   "openshell-egress/1 {"peers":[{"exe":...,"ancestors":[...]}]}\n"
//   proxy → forwarder   "ok\n"
//
// The forwarder sends nothing else until it reads the acknowledgement, so the
// proxy has read exactly the preamble when it hands the socket to its HTTP
// parser (which reads the socket directly and would miss bytes pushed back).

import type { Duplex } from "node:stream";
import { orElse } from "../../host/fs.js";
import type { EgressPeer } from "./match.js";

export const PREAMBLE_TAG = "openshell-egress/1";
export const PREAMBLE_ACK = "ok\n";
export const MAX_PREAMBLE_BYTES = 64 * 1024;

export interface Preamble {
  /** Every process holding the client's end of the connection; empty when none could be identified. */
  peers: EgressPeer[];
}

export function encodePreamble(preamble: Preamble): string {
  return `${PREAMBLE_TAG} ${JSON.stringify(preamble)}\n`;
}

/** The preamble in `line` (without its newline), or undefined when it is not one. */
export function decodePreamble(line: string): Preamble | undefined {
  if (!line.startsWith(`${PREAMBLE_TAG} `)) return undefined;
  const value: unknown = orElse(undefined, () => JSON.parse(line.slice(PREAMBLE_TAG.length + 1)));
  const peers = (value as { peers?: unknown } | null)?.peers;
  if (!Array.isArray(peers)) return undefined;
  const valid = peers.every(
    (p: { exe?: unknown; ancestors?: unknown } | null) =>
      typeof p?.exe === "string" &&
      Array.isArray(p.ancestors) &&
      p.ancestors.every((a: unknown) => typeof a === "string"),
  );
  if (!valid) return undefined;
  return { peers: (peers as EgressPeer[]).map((p) => ({ exe: p.exe, ancestors: [...p.ancestors] })) };
}

/**
 * Joins two streams both ways (a client and its upstream, on either side of
 * the proxy); each end is passed on, and a failure on either side closes both.
 */
export function splice(a: Duplex, b: Duplex): void {
  const destroyBoth = () => {
    a.destroy();
    b.destroy();
  };
  a.on("error", destroyBoth);
  b.on("error", destroyBoth);
  a.on("close", () => closeAfterFlush(b));
  b.on("close", () => closeAfterFlush(a));
  a.pipe(b);
  b.pipe(a);
}

function closeAfterFlush(stream: Duplex): void {
  if (stream.destroyed) return;
  stream.end(() => stream.destroy());
}
