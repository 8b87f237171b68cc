// A command run over the gateway's ExecSandboxInteractive stream, as
// `sandbox exec` runs it: stdin streamed live with backpressure (no
// buffering, no size cap; its end is passed on), stdout and stderr kept
// apart and written to the caller's streams as they arrive, a terminal's
// size and resizes, and a timeout the gateway enforces on the whole call
// (reaching the sandbox and starting the command as well as running it).
// Internal to the API: the CLI's exec presents it.

import { status } from "@grpc/grpc-js";
import { OpenShellError } from "../core/errors.js";
import type { ExecSandboxEvent, ExecSandboxInput } from "../gen/openshell.js";
import { mapGrpcError } from "../transport/grpc.js";
import { typed } from "./errors.js";
import type { Link } from "./link.js";

export interface InteractiveExecOptions {
  /** The sandbox's name (for messages) and id. */
  name: string;
  sandboxId: string;
  command: string[];
  workdir: string;
  environment: Record<string, string>;
  /** Whole seconds the gateway lets the call run (0: no bound); it kills the command then. */
  timeoutSeconds: number;
  /** A terminal of this size, or none. */
  tty: { cols: number; rows: number } | undefined;
  /** What the command reads; its end closes the command's stdin. Left paused when the command ends. */
  stdin: NodeJS.ReadableStream;
  /** Where each piece of the command's output goes, in order, with backpressure. */
  stdout: OutputSink;
  stderr: OutputSink;
}

/** What output is written to: a Writable, or anything that writes and says when it drains as one does. */
export interface OutputSink {
  write(data: Buffer): boolean;
  once(event: "drain", listener: () => void): unknown;
}

/**
 * Passes what `input` reads on to `sink` as it arrives, pausing `input`
 * while the sink is full, and ends the sink when `input` ends. Returns the
 * release: the listeners removed and `input` paused.
 */
export function feedInput(input: NodeJS.ReadableStream, sink: OutputSink & { end(): void }): () => void {
  const onData = (data: Buffer | string): void => {
    if (!sink.write(Buffer.from(data))) {
      input.pause();
      sink.once("drain", () => input.resume());
    }
  };
  const onEnd = (): void => {
    sink.end();
  };
  input.on("data", onData);
  input.once("end", onEnd);
  return () => {
    input.off("data", onData);
    input.off("end", onEnd);
    input.pause();
  };
}

/** A running interactive command. */
export interface InteractiveExec {
  /** The command's exit status (128 + N for a death by signal N); rejects when the stream fails first. */
  readonly exit: Promise<number>;
  /** A new terminal size. */
  resize(cols: number, rows: number): void;
  /** Ends the call: the gateway kills the command; `exit` then stays pending. */
  cancel(): void;
}

/** Starts `options.command` in the sandbox over ExecSandboxInteractive. */
export async function execInteractive(link: Link, options: InteractiveExecOptions): Promise<InteractiveExec> {
  const { client, target } = await link.grpc();
  const call = client.execSandboxInteractive();
  const send = (input: ExecSandboxInput): boolean => call.write(input);
  const { stdin } = options;
  send({
    payload: {
      $case: "start",
      value: {
        sandboxId: options.sandboxId,
        command: options.command,
        workdir: options.workdir,
        environment: options.environment,
        timeoutSeconds: options.timeoutSeconds,
        stdin: Buffer.alloc(0),
        tty: options.tty !== undefined,
        cols: options.tty?.cols ?? 0,
        rows: options.tty?.rows ?? 0,
      },
    },
  });
  const release = feedInput(stdin, {
    write: (data) => send({ payload: { $case: "stdin", value: data } }),
    once: (event, listener) => call.once(event, listener),
    end: () => call.end(),
  });
  const exit = new Promise<number>((resolve, reject) => {
    let exitCode: number | undefined;
    call.on("data", (event: ExecSandboxEvent) => {
      const payload = event.payload;
      if (payload?.$case === "stdout" || payload?.$case === "stderr") {
        const out = payload.$case === "stdout" ? options.stdout : options.stderr;
        if (!out.write(payload.value.data)) {
          call.pause();
          out.once("drain", () => call.resume());
        }
      } else if (payload?.$case === "exit") exitCode = payload.value.exitCode;
    });
    call.on("end", () => {
      if (exitCode === undefined) {
        reject(new OpenShellError("connection_lost", "the exec stream ended without an exit status"));
      } else resolve(exitCode);
    });
    call.on("error", (error: Error & { code?: number; details?: string }) => {
      if (exitCode !== undefined) resolve(exitCode);
      else if (error.code === status.DEADLINE_EXCEEDED) {
        // The gateway's own deadline passed before the sandbox started the command.
        reject(new OpenShellError("timeout", `sandbox '${options.name}': ${error.details ?? error.message}`));
      } else reject(mapGrpcError(error, target));
    });
  });
  exit.then(release, release);
  return {
    exit: typed(() => exit),
    resize: (cols, rows) => {
      send({ payload: { $case: "resize", value: { cols, rows } } });
    },
    cancel: () => {
      release();
      call.cancel();
    },
  };
}
