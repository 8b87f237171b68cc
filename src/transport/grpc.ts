// The gRPC client side: one place that builds a channel to a gateway (plain,
// TLS, mTLS; bearer token on every call) and one place that turns gRPC
// status codes into OpenShellErrors a person can act on.

import {
  type CallOptions,
  type ChannelCredentials,
  type ClientUnaryCall,
  credentials,
  type InterceptingCall,
  InterceptingCall as InterceptingCallImpl,
  type Interceptor,
  Metadata,
  type ServiceError,
  status,
} from "@grpc/grpc-js";
import { OpenShellError } from "../core/errors.js";
import { FILE_LIMITS } from "../core/files.js";
import { COMMAND_LIMITS, ENVIRONMENT_LIMITS } from "../core/names.js";
import { MAX_POLICY_ENCODED_BYTES } from "../core/policy/validate.js";
import type { OpenShellClient } from "../gen/openshell.js";
import { BULK_WINDOW_BYTES } from "../host/patches.js";
import { FastOpenShellClient } from "./frames.js";

/**
 * The largest message either side accepts: the largest create request the limits allow. Its files
 * (content, paths, and 96 bytes each of tags, lengths, mode, size and digest), the policy, environment
 * and command, and 128 KiB for their framing, names and labels. OpenShell keeps 1 MiB; we go this far.
 */
export const MAX_MESSAGE_BYTES =
  FILE_LIMITS.total +
  FILE_LIMITS.count * (FILE_LIMITS.pathBytes + 96) +
  MAX_POLICY_ENCODED_BYTES +
  ENVIRONMENT_LIMITS.totalBytes +
  COMMAND_LIMITS.totalBytes +
  128 * 1024;

export interface GatewayTarget {
  /** Gateway name for messages and hints. */
  name: string;
  /** `http://host:port` or `https://host:port`. */
  endpoint: string;
  token?: string | undefined;
  ca?: Buffer | undefined;
  clientCert?: Buffer | undefined;
  clientKey?: Buffer | undefined;
  insecure?: boolean | undefined;
  /** Hint shown when the gateway cannot be reached. */
  unreachableHint?: string | undefined;
  /** Hint shown when the gateway refuses our credentials. */
  unauthorizedHint?: string | undefined;
}

export function parseEndpoint(endpoint: string): {
  tls: boolean;
  address: string;
  host: string;
  port: number;
} {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw new OpenShellError(
      "invalid_input",
      `invalid gateway endpoint '${endpoint}': expected http://HOST:PORT`,
    );
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new OpenShellError(
      "invalid_input",
      `invalid gateway endpoint '${endpoint}': the scheme must be http or https`,
    );
  }
  const tls = url.protocol === "https:";
  const port = url.port === "" ? (tls ? 443 : 80) : Number(url.port);
  const host = url.hostname.replace(/^\[|\]$/g, "");
  const address = host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`;
  return { tls, address, host, port };
}

function bearerInterceptor(token: string): Interceptor {
  return (options, nextCall): InterceptingCall =>
    new InterceptingCallImpl(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set("authorization", `Bearer ${token}`);
        next(metadata, listener);
      },
    });
}

export function channelCredentials(target: GatewayTarget): ChannelCredentials {
  const { tls } = parseEndpoint(target.endpoint);
  if (!tls) return credentials.createInsecure();
  return credentials.createSsl(
    target.ca ?? null,
    target.clientKey ?? null,
    target.clientCert ?? null,
    target.insecure ? { rejectUnauthorized: false, checkServerIdentity: () => undefined } : {},
  );
}

/**
 * HTTP/2 flow-control windows large enough that a bulk stream (upload,
 * relay) is not throttled to a round trip per 64 KiB.
 */
export const BULK_CHANNEL_OPTIONS = { "grpc-node.flow_control_window": BULK_WINDOW_BYTES } as const;

export function connectGateway(target: GatewayTarget): OpenShellClient {
  const { address } = parseEndpoint(target.endpoint);
  return new FastOpenShellClient(address, channelCredentials(target), {
    ...BULK_CHANNEL_OPTIONS,
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    "grpc.keepalive_time_ms": 10_000,
    "grpc.keepalive_permit_without_calls": 0,
    "grpc.enable_retries": 0,
    interceptors: target.token ? [bearerInterceptor(target.token)] : [],
  });
}

export function isServiceError(error: unknown): error is ServiceError {
  return typeof error === "object" && error !== null && "code" in error && "details" in error;
}

/** The reason grpc-js gives inside "No connection established. Last error: ...". */
function lastError(details: string): string {
  const match =
    /Last error: (?:Error: )?([\s\S]*?)(?:\s*\(\d{4}-\d\d-\d\dT[^)]*\))?\.?\s*(?:Resolution note:.*)?$/.exec(
      details,
    );
  const reason = (match?.[1] ?? details).trim();
  // OpenSSL's "...:SSL routines:...:tlsv13 alert certificate required:...": keep the alert.
  const alert = /alert ([a-z ]+?)(?::|$)/m.exec(reason);
  return alert ? `TLS alert: ${alert[1]}` : reason.split("\n")[0]!;
}

/**
 * A failure of the TLS layer, told apart from a gateway that is down: the
 * server's certificate not trusted, a client certificate missing or refused,
 * or one side not speaking TLS.
 */
function tlsFailure(
  details: string,
  target: Pick<GatewayTarget, "name" | "endpoint"> & Partial<GatewayTarget>,
): OpenShellError | undefined {
  const https = target.endpoint.startsWith("https:");
  const where = `gateway '${target.name}' at ${target.endpoint}`;
  const reason = lastError(details);
  if (https && /certificate required|alert number 116|peer did not return a certificate/i.test(details)) {
    return new OpenShellError(
      "not_authorized",
      `${where} refused the TLS connection: it requires a client certificate (${reason})`,
      {
        hint: `Register it with a certificate its client CA signed: openshell gateway add ${target.endpoint} --ca FILE --client-cert FILE --client-key FILE --token-file FILE`,
      },
    );
  }
  if (
    https &&
    /unknown ca|bad certificate|alert number 4[28]|certificate unknown|alert number 46|unsupported certificate/i.test(
      details,
    )
  ) {
    return new OpenShellError("not_authorized", `${where} refused our client certificate (${reason})`, {
      hint: "Use a client certificate signed by the CA the gateway was started with (--client-ca).",
    });
  }
  if (
    https &&
    /unable to verify|self[- ]signed|certificate has expired|not yet valid|Hostname\/IP does not match|ERR_TLS_CERT_ALTNAME|unable to get (local )?issuer|certificate signature failure|CERT_/i.test(
      details,
    )
  ) {
    const why = /Hostname\/IP does not match|ERR_TLS_CERT_ALTNAME/i.test(details)
      ? `it does not name ${parseEndpoint(target.endpoint).host}`
      : /expired/i.test(details)
        ? "it has expired"
        : /not yet valid/i.test(details)
          ? "it is not valid yet (check the clocks)"
          : "it is signed by a CA this CLI does not trust";
    return new OpenShellError(
      "gateway_unreachable",
      `TLS: cannot verify the certificate of ${where}: ${why} (${reason})`,
      {
        hint: target.ca
          ? `The CA file registered for it did not sign its certificate; get the gateway's current CA (tls/ca.crt in its state directory) and run: openshell gateway add ${target.endpoint} --ca ca.crt`
          : `Trust the CA that signed it: openshell gateway add ${target.endpoint} --ca ca.crt (its owner has it in $XDG_STATE_HOME/openshell/gateways/<name>/tls/ca.crt). --gateway-insecure skips verification (not recommended).`,
      },
    );
  }
  if (https && /wrong version number|packet length too long|http request|unexpected eof/i.test(details)) {
    return new OpenShellError("gateway_unreachable", `${where} does not speak TLS (${reason})`, {
      hint: `Use its plaintext endpoint: ${target.endpoint.replace(/^https:/, "http:")}`,
    });
  }
  if (
    https &&
    /No connection established/i.test(details) &&
    /Failed to connect|Socket closed|ECONNRESET/i.test(reason)
  ) {
    return new OpenShellError(
      "gateway_unreachable",
      `${where} closed the TLS connection during setup (${reason})`,
      {
        hint: target.clientCert
          ? "It may not accept our client certificate: check that its client CA (--client-ca) signed it."
          : "If it requires client certificates, register it with --client-cert and --client-key.",
      },
    );
  }
  return undefined;
}

/** Maps a gRPC failure to an OpenShellError naming the gateway and the fix. */
export function mapGrpcError(
  error: unknown,
  target: Pick<GatewayTarget, "name" | "endpoint"> & Partial<GatewayTarget>,
): OpenShellError {
  if (error instanceof OpenShellError) return error;
  if (!isServiceError(error)) {
    return new OpenShellError("internal", error instanceof Error ? error.message : String(error), {
      cause: error,
    });
  }
  // grpc-js ends a connection failure with "Resolution note: " even when it has none.
  const details = (error.details || error.message)
    .replace(/\.?\s*Resolution note:\s*$/, ".")
    .replace("Last error: Error: ", "Last error: ");
  switch (error.code) {
    case status.UNAVAILABLE: {
      const tls = tlsFailure(details, target);
      if (tls) return tls;
      // Only a failure to reach the gateway itself; relay failures inside it name their own cause.
      if (
        /No connection established|failed to connect to all addresses|getaddrinfo|Connection dropped/i.test(
          details,
        )
      ) {
        return new OpenShellError(
          "gateway_unreachable",
          `failed to connect to gateway '${target.name}' at ${target.endpoint}: ${details}`,
          {
            hint:
              target.unreachableHint ??
              "Start it with `openshell gateway start`, or register another with `openshell gateway add <endpoint>`.",
            cause: error,
          },
        );
      }
      return new OpenShellError("connection_lost", `gateway '${target.name}': ${details}`, { cause: error });
    }
    case status.UNAUTHENTICATED:
    case status.PERMISSION_DENIED:
      return new OpenShellError("not_authorized", `not authorized by gateway '${target.name}': ${details}`, {
        hint:
          target.unauthorizedHint ??
          "Use the token its owner gave you (`openshell gateway add <endpoint> --token-file FILE`).",
        cause: error,
      });
    case status.NOT_FOUND:
      return new OpenShellError("not_found", details, { cause: error });
    case status.ALREADY_EXISTS:
      return new OpenShellError("already_exists", details, { cause: error });
    case status.INVALID_ARGUMENT:
    case status.OUT_OF_RANGE:
      return new OpenShellError("invalid_input", details, { cause: error });
    case status.RESOURCE_EXHAUSTED:
      if (/message larger than max|received message larger/i.test(details)) {
        return new OpenShellError(
          "invalid_input",
          `request too large for gateway '${target.name}': ${details}`,
          { cause: error },
        );
      }
      return new OpenShellError("failed_precondition", details, { cause: error });
    case status.FAILED_PRECONDITION:
    case status.ABORTED:
      return new OpenShellError("failed_precondition", details, { cause: error });
    case status.DEADLINE_EXCEEDED:
      return new OpenShellError("timeout", `gateway '${target.name}' did not answer in time: ${details}`, {
        cause: error,
      });
    case status.UNIMPLEMENTED:
      return new OpenShellError(
        "unsupported",
        `gateway '${target.name}' does not implement this call: ${details}`,
        { cause: error },
      );
    case status.CANCELLED:
      // What a client sees of a gateway that stops while the call is open.
      return new OpenShellError(
        "connection_lost",
        `connection to gateway '${target.name}' lost (the call was cancelled: ${details})`,
        { cause: error },
      );
    default:
      return new OpenShellError("internal", `gateway '${target.name}': ${details}`, { cause: error });
  }
}

type UnaryMethod<Req, Res> = (
  request: Req,
  metadata: Metadata,
  options: Partial<CallOptions>,
  callback: (error: ServiceError | null, response: Res) => void,
) => ClientUnaryCall;

/** Calls a unary method and resolves with its response or a mapped error. */
export function unary<Req, Res>(
  target: GatewayTarget,
  method: UnaryMethod<Req, Res>,
  request: Req,
  options: { deadlineMs?: number; signal?: AbortSignal } = {},
): Promise<Res> {
  return new Promise((resolve, reject) => {
    const callOptions: Partial<CallOptions> = {};
    if (options.deadlineMs !== undefined) callOptions.deadline = Date.now() + options.deadlineMs;
    const call = method(request, new Metadata(), callOptions, (error, response) => {
      options.signal?.removeEventListener("abort", onAbort);
      if (error) reject(mapGrpcError(error, target));
      else resolve(response);
    });
    const onAbort = (): void => call.cancel();
    options.signal?.addEventListener("abort", onAbort, { once: true });
  });
}
