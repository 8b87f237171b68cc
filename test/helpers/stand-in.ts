// A stand-in for an OpenShell gateway: a real gRPC server that answers
// GetGatewayInfo as an OpenShell gateway does (no capabilities, so none of
// our extensions), the calls a test gives, and UNIMPLEMENTED to every other.

import { Server, ServerCredentials, status } from "@grpc/grpc-js";
import { OpenShellService } from "../../src/gen/openshell.js";

export interface StandIn {
  server: Server;
  /** Its endpoint, `http://127.0.0.1:PORT`. */
  endpoint: string;
}

export async function startStandIn(
  handlers: Record<string, unknown>,
  /** Called for each call answered UNIMPLEMENTED. */
  onUnimplemented: () => void = () => {},
): Promise<StandIn> {
  const server = new Server();
  const refuse = (_call: unknown, callback: (error: { code: number; details: string }) => void) => {
    onUnimplemented();
    callback({ code: status.UNIMPLEMENTED, details: "not in this stand-in" });
  };
  server.addService(OpenShellService, {
    ...Object.fromEntries(Object.keys(OpenShellService).map((key) => [key, refuse])),
    getGatewayInfo: (_call: unknown, callback: (e: null, r: unknown) => void) =>
      callback(null, { status: 1, gatewayVersion: "upstream", computeDrivers: [], capabilities: [] }),
    ...handlers,
  } as never);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (e, p) =>
      e ? reject(e) : resolve(p),
    ),
  );
  return { server, endpoint: `http://127.0.0.1:${port}` };
}
