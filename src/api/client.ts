// The API's entry: `new OpenShell(options?)` (or `await OpenShell.connect()`)
// talks to the gateway the CLI would (the same configuration, each part
// overridable), and creates, finds, lists, watches and deletes sandboxes.
// Nothing happens on import or construction: the configuration is read on
// the first call, the gRPC channel opened then, and an SSH connection per
// sandbox only when it runs its first command.

import { readFileSync } from "node:fs";
import type { Duplex } from "node:stream";
import { OpenShellError } from "../core/errors.js";
import {
  DEFAULT_FILE_MODE,
  effectiveMode,
  type FileSpec,
  formatMode,
  normalizeSandboxPath,
  sha256HexEach,
  validateMode,
  validateSandboxPath,
} from "../core/files.js";
import { parseTtl, ttlError } from "../core/lifetime.js";
import { type Limits, limitsToResources, parseCpu, parsePids, parseQuantity } from "../core/limits.js";
import {
  imageReference,
  parseSelector,
  validateCommand,
  validateLabels,
  validateSandboxName,
  validateWorkspaceName,
} from "../core/names.js";
import {
  ANNOTATION_START_ON_ATTACH,
  CAPABILITY_SANDBOX_FILES,
  CAPABILITY_SANDBOX_IMAGES,
  CAPABILITY_SANDBOX_TTL,
  CAPABILITY_START_ON_ATTACH,
} from "../core/protocol.js";
import {
  type CreateSandboxRequest,
  type GetGatewayInfoResponse,
  type SandboxFile,
  type Sandbox as SandboxInfo,
  SandboxPhase,
  SandboxTemplate,
  ServiceStatus,
  WatchSandboxRequest,
} from "../gen/openshell.js";
import { DEFAULT_WORKSPACE } from "../host/config.js";
import { checkFileSpecs, readFileContents } from "../host/local-files.js";
import { layoutCreateRequest } from "../transport/frames.js";
import { forwardSsh } from "../transport/ssh.js";
import type { UploadPlan } from "../transport/tar/upload.js";
import { type ResolvedGateway, resolveClientGateway } from "./config.js";
import { InvalidArgumentError, toApiError, typed } from "./errors.js";
import {
  type ImageInfo,
  listImages,
  PULL_DEADLINE_MS,
  pruneImages,
  pullImage,
  removeImage,
} from "./images.js";
import { execInteractive, type InteractiveExec, type InteractiveExecOptions } from "./interactive.js";
import { Link, type ProgressEvent } from "./link.js";
import { renewSandbox, Sandbox, startSandbox, stopSandbox, ttlUnsupported } from "./sandbox.js";

export interface OpenShellOptions {
  /** A registered gateway's name (default: OPENSHELL_GATEWAY, else the active gateway). */
  gateway?: string | undefined;
  /** The gateway's endpoint, `http://HOST:PORT` or `https://HOST:PORT` (default: OPENSHELL_GATEWAY_ENDPOINT). */
  endpoint?: string | undefined;
  /** The bearer token (default: the registered gateway's token file). */
  token?: string | undefined;
  /** PEM of the CA that signed the gateway's certificate, or a path to it. */
  ca?: string | Buffer | undefined;
  /** PEM of a client certificate and its key for mTLS, or paths to them. */
  clientCert?: string | Buffer | undefined;
  clientKey?: string | Buffer | undefined;
  /** Skip verifying the gateway's TLS certificate (not recommended). */
  insecure?: boolean | undefined;
  /** The workspace sandboxes live in (default: OPENSHELL_WORKSPACE, else "default"). */
  workspace?: string | undefined;
  /** The environment to read OPENSHELL_* from (default: process.env). */
  env?: NodeJS.ProcessEnv | undefined;
}

/** A file placed in the sandbox at creation, read-only for the sandbox unless `mode` says otherwise. */
export type CreateFile =
  | { path: string; content: string | Uint8Array; mode?: number }
  | { path: string; from: string; mode?: number };

export interface CreateOptions {
  /** The sandbox's name (default: a generated one). */
  name?: string | undefined;
  labels?: Record<string, string> | undefined;
  /** Environment of the sandbox's processes. */
  env?: Record<string, string> | undefined;
  /** Files placed before anything runs, from bytes or from a local file. */
  files?: CreateFile[] | undefined;
  /** A policy file's path, or the policy document as an object (the YAML file's shape). */
  policy?: string | Record<string, unknown> | undefined;
  /** Local files or directories uploaded once Ready, before the command starts (`to` defaults to /sandbox). */
  uploads?: { from: string; to?: string; gitIgnore?: boolean; git?: boolean }[] | undefined;
  /** The main command (default: none; the sandbox idles until deleted). */
  command?: string[] | undefined;
  /** Whether the main command gets a terminal. */
  tty?: boolean | undefined;
  /** Limits, as `sandbox create` takes them: "500m" or "2" CPUs, "512Mi" memory, a process count, "1Gi" disk. */
  cpu?: string | undefined;
  memory?: string | undefined;
  pids?: string | number | undefined;
  disk?: string | undefined;
  /** Lifetime: seconds, or "30m", "2h", "1d"; the gateway deletes it then. */
  ttl?: number | string | undefined;
  /**
   * The image the sandbox runs (`sandbox create --from`): a reference
   * (`registry/repo:tag`, `...@sha256:...`), a community name (`base`), or an
   * absolute path to an OCI or docker archive, an OCI layout or a root
   * filesystem directory on the gateway's machine. Unset: the host's root.
   */
  from?: string | undefined;
  /** Progress of the creation, as `sandbox create` shows it. */
  onProgress?: ((event: ProgressEvent) => void) | undefined;
  /** How long to wait for Ready without progress (default 300 s, or OPENSHELL_PROVISION_TIMEOUT). */
  timeoutMs?: number | undefined;
  signal?: AbortSignal | undefined;
}

export interface ListOptions {
  /** A label selector, `key=value,key2=value2`. */
  selector?: string | undefined;
  /** At most this many (one request; default: every sandbox, page by page). */
  limit?: number | undefined;
  /** Skip this many first (default 0). */
  offset?: number | undefined;
  signal?: AbortSignal | undefined;
}

function pem(what: string, value: string | Buffer | undefined): Buffer | undefined {
  if (value === undefined || Buffer.isBuffer(value)) return value;
  if (value.includes("-----BEGIN")) return Buffer.from(value);
  try {
    return readFileSync(value);
  } catch (error) {
    throw new InvalidArgumentError(`${what} ${value}: ${(error as Error).message}`, { field: what });
  }
}

/** `template.resources` from the limits given, as `sandbox create` sends them; undefined when none is. */
function resources(o: CreateOptions): Record<string, unknown> | undefined {
  const limits: Limits = {};
  const take = (field: string, value: number | string): number => {
    if (typeof value === "string") throw new InvalidArgumentError(value, { field });
    return value;
  };
  if (o.cpu !== undefined) limits.cpuMillis = take("cpu", parseCpu(o.cpu, "cpu"));
  if (o.memory !== undefined) limits.memoryBytes = take("memory", parseQuantity(o.memory, "memory"));
  if (o.pids !== undefined) limits.pids = take("pids", parsePids(String(o.pids), "pids"));
  if (o.disk !== undefined) limits.diskBytes = take("disk", parseQuantity(o.disk, "disk"));
  if (Object.keys(limits).length === 0) return undefined;
  const result = limitsToResources(limits) as { limits: Record<string, string> };
  if (o.cpu !== undefined) result.limits.cpu = o.cpu.trim();
  if (o.memory !== undefined) result.limits.memory = o.memory.trim();
  return result;
}

/** The caller as the gateway identified it (GetCurrentUser). */
export interface CurrentUser {
  subject: string;
  displayName: string;
  roles: string[];
  scopes: string[];
  /** How: `bearer_token`, `none` (the gateway asks no credential), or an OpenShell gateway's `oidc`, `mtls`, ... */
  identityProvider: string;
}

/** Compares the digests, sizes and modes the gateway returned with what was sent. */
export function checkReturnedFiles(sent: SandboxFile[], returned: SandboxFile[]): string | undefined {
  const byPath = new Map(returned.map((file) => [file.path, file]));
  for (const file of sent) {
    const back = byPath.get(file.path);
    if (!back) return `the gateway did not keep ${file.path}`;
    if (back.sha256 !== file.sha256 || Number(back.size) !== file.content.length) {
      return `${file.path}: the gateway stored sha256 ${back.sha256 || "(none)"}, expected ${file.sha256}`;
    }
    if (effectiveMode(back.mode) !== effectiveMode(file.mode)) {
      return `${file.path}: the gateway stored mode ${formatMode(back.mode)}, expected ${formatMode(file.mode)}`;
    }
  }
  return undefined;
}

/**
 * A gateway that would start the command before the uploads are in (an
 * OpenShell gateway: it ignores the annotation that holds it, and its
 * sandboxes have no openshell-start) is refused before anything is created.
 */
export function holdUnsupported(gateway: string): OpenShellError {
  return new OpenShellError(
    "unsupported",
    `gateway '${gateway}' cannot hold the command until the uploads are in: it would start it before its files (an OpenShell gateway ignores ${ANNOTATION_START_ON_ATTACH})`,
    {
      hint: "Create the sandbox with --upload and no command, then run it with `openshell sandbox exec -n NAME -- COMMAND`.",
    },
  );
}

/** How long a CreateSandbox may take when it pulls no image. */
const CREATE_DEADLINE_MS = 60_000;

/** @internal A CreateSandbox request to send, its injected files' bytes filled in on the way. */
export interface CreateSubmission {
  /** The request; `spec.files` hold each file's path, mode and size, their content is filled by `fill`. */
  request: CreateSandboxRequest;
  /** Each file's size, in the order of `spec.files`. */
  sizes: readonly number[];
  /** Writes each file's bytes into its slot (a buffer of its size inside the request's frame). */
  fill(slots: Buffer[]): Promise<void>;
  /** The main command is held until the uploads are in (ANNOTATION_START_ON_ATTACH with uploads to make). */
  holdsForUploads?: boolean;
  /** The refusals when the gateway keeps no lifetimes, would drop the files, or would not hold the command. */
  refuseTtl(): OpenShellError;
  refuseFiles(): OpenShellError;
  signal?: AbortSignal | undefined;
}

/**
 * Sends a CreateSandbox: asks the gateway whether it takes the files and the
 * lifetime while the files are read into the request, creates, and checks
 * the digests, sizes and modes the gateway stored (a mismatch deletes the
 * sandbox). Resolves with the created sandbox, not yet Ready.
 */
async function submitCreate(link: Link, s: CreateSubmission): Promise<SandboxInfo> {
  const spec = s.request.spec!;
  const hasFiles = spec.files.length > 0;
  const hasTtl = spec.ttlSeconds !== undefined;
  // A community sandbox name, resolved by a gateway that keeps images, else here (as upstream's CLI).
  const community =
    spec.template?.image !== undefined && imageReference(spec.template.image) !== spec.template.image;
  const questions = [
    hasFiles && "takes files (--file)",
    hasTtl && "keeps sandbox lifetimes (--ttl)",
    s.holdsForUploads && "can hold the command until the uploads are in (--upload with a command)",
    community && "resolves community sandbox names (--from NAME)",
  ].filter((question) => typeof question === "string");
  const capabilities =
    questions.length > 0 ? link.capabilities(questions.join(", or ")) : Promise.resolve([]);
  capabilities.catch(() => {}); // awaited below, after the files
  if (community && !(await capabilities).includes(CAPABILITY_SANDBOX_IMAGES)) {
    spec.template!.image = imageReference(
      spec.template!.image!,
      link.env.OPENSHELL_COMMUNITY_REGISTRY || undefined,
    );
  }
  const laidOut = layoutCreateRequest(s.request, s.sizes);
  await s.fill(laidOut.slots);
  if (hasTtl && !(await capabilities).includes(CAPABILITY_SANDBOX_TTL)) throw s.refuseTtl();
  if (hasFiles && !(await capabilities).includes(CAPABILITY_SANDBOX_FILES)) throw s.refuseFiles();
  if (s.holdsForUploads && !(await capabilities).includes(CAPABILITY_START_ON_ATTACH)) {
    throw holdUnsupported(link.gateway().name);
  }
  const request = laidOut.request;
  const { client, target } = await link.grpc();
  const creating = link.call(target, client.createSandbox.bind(client), request, {
    // A create from an image not yet pulled waits for the pull.
    deadlineMs: spec.template?.image ? PULL_DEADLINE_MS : CREATE_DEADLINE_MS,
    ...(s.signal ? { signal: s.signal } : {}),
  });
  creating.catch(() => {}); // awaited below, after the digests
  // Hashed while the gateway receives and stores the files: needed only to check its answer.
  const digests = await sha256HexEach(laidOut.slots);
  const sent: SandboxFile[] = request.spec!.files.map((file, i) => ({ ...file, sha256: digests[i]! }));
  const { sandbox: created } = await creating;
  if (!created?.metadata) throw new OpenShellError("internal", "sandbox missing from response");
  const mismatch = checkReturnedFiles(sent, created.spec?.files ?? []);
  if (mismatch) {
    await link.delete(created.metadata.name).catch(() => undefined);
    throw new OpenShellError("internal", `injected file check failed, sandbox deleted: ${mismatch}`);
  }
  return created;
}

/** A call's `signal` and `timeoutMs` as the gRPC call's options. */
function callOptions(options: { signal?: AbortSignal; timeoutMs?: number }): {
  signal?: AbortSignal;
  deadlineMs?: number;
} {
  return {
    ...(options.signal ? { signal: options.signal } : {}),
    ...(options.timeoutMs !== undefined ? { deadlineMs: options.timeoutMs } : {}),
  };
}

export class OpenShell {
  #link: Link;

  constructor(options: OpenShellOptions = {}) {
    const env = options.env ?? process.env;
    const workspace = options.workspace ?? env.OPENSHELL_WORKSPACE ?? DEFAULT_WORKSPACE;
    const problem = workspace === "" ? "workspace must not be empty" : validateWorkspaceName(workspace);
    if (problem)
      throw new InvalidArgumentError(`workspace ${JSON.stringify(workspace)}: ${problem}`, {
        field: "workspace",
      });
    this.#link = new Link(
      () =>
        resolveClientGateway(
          { gateway: options.gateway, gatewayEndpoint: options.endpoint, gatewayInsecure: options.insecure },
          {
            token: options.token,
            ca: pem("ca", options.ca),
            clientCert: pem("clientCert", options.clientCert),
            clientKey: pem("clientKey", options.clientKey),
          },
          env,
        ),
      workspace,
      env,
    );
  }

  /**
   * @internal A client on a gateway resolved elsewhere: the CLI's, which may
   * have started the local gateway first.
   */
  static forResolved(resolved: ResolvedGateway, workspace: string, env: NodeJS.ProcessEnv): OpenShell {
    const client = new OpenShell({ workspace });
    client.#link = new Link(() => resolved, workspace, env);
    return client;
  }

  /** A client whose gateway is resolved now, so a missing configuration fails here. */
  static async connect(options: OpenShellOptions = {}): Promise<OpenShell> {
    const client = new OpenShell(options);
    await typed(async () => client.#link.gateway());
    return client;
  }

  /**
   * Whether the gateway answers, and its version (Health: needs no
   * credential, so a refused token does not fail it).
   */
  health(
    options: { signal?: AbortSignal; timeoutMs?: number } = {},
  ): Promise<{ healthy: boolean; version: string }> {
    return typed(async () => {
      const { client, target } = await this.#link.grpc();
      const health = await this.#link.call(target, client.health.bind(client), {}, callOptions(options));
      return { healthy: health.status === ServiceStatus.SERVICE_STATUS_HEALTHY, version: health.version };
    });
  }

  /**
   * The gateway's description (version, compute drivers, capabilities);
   * rejects with NotAuthorizedError when it does not accept this client's
   * credentials (`permissionDenied` when it knows the caller but keeps this
   * call for its admins).
   */
  info(options: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<GetGatewayInfoResponse> {
    return typed(async () => {
      const { client, target } = await this.#link.grpc();
      return this.#link.call(target, client.getGatewayInfo.bind(client), {}, callOptions(options));
    });
  }

  /**
   * Who the gateway takes this client for (GetCurrentUser): its subject,
   * roles, scopes and how it was identified.
   */
  whoami(options: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<CurrentUser> {
    return typed(async () => {
      const { client, target } = await this.#link.grpc();
      return this.#link.call(target, client.getCurrentUser.bind(client), {}, callOptions(options));
    });
  }

  /**
   * @internal A raw byte stream to sandbox `sandboxId`'s SSH server (the
   * CLI's ssh-proxy), with a new SSH session unless `token` names one. The
   * stream emits "gateway-error" with the gateway's reason before it fails.
   */
  sshRelay(sandboxId: string, token?: string): Promise<Duplex> {
    return typed(async () => {
      const { client, target } = await this.#link.grpc();
      const session =
        token ?? (await this.#link.call(target, client.createSshSession.bind(client), { sandboxId })).token;
      return forwardSsh(client, target, sandboxId, session);
    });
  }

  /** The gateway this client talks to. */
  get gateway(): { name: string; endpoint: string } {
    const { name, target } = this.#link.gateway();
    return { name, endpoint: target.endpoint };
  }

  get workspace(): string {
    return this.#link.workspace;
  }

  /**
   * Creates a sandbox and resolves once it is Ready (uploads done, its
   * command started). A failure after the gateway created it deletes it.
   */
  create(options: CreateOptions = {}): Promise<Sandbox> {
    return typed(() => this.#create(options));
  }

  async #create(o: CreateOptions): Promise<Sandbox> {
    const link = this.#link;
    // ---- everything local, before any RPC ----
    if (o.name !== undefined) {
      const problem = validateSandboxName(o.name);
      if (problem) throw new InvalidArgumentError(`name ${o.name}: ${problem}`, { field: "name" });
    }
    const labels = o.labels ?? {};
    const labelProblem = validateLabels(labels);
    if (labelProblem) throw new InvalidArgumentError(labelProblem, { field: "labels" });
    const environment = o.env ?? {};
    let ttlSeconds: number | undefined;
    if (o.ttl !== undefined) {
      ttlSeconds = typeof o.ttl === "number" ? o.ttl : parseTtl(o.ttl);
      if (ttlSeconds === undefined || !Number.isInteger(ttlSeconds) || ttlSeconds <= 0)
        throw new InvalidArgumentError(ttlError("ttl", String(o.ttl)), { field: "ttl" });
    }
    const template = resources(o);
    const command = o.command ?? [];
    if (command.length > 0) {
      const problem = validateCommand(command, "command");
      if (problem) throw new InvalidArgumentError(problem, { field: "command" });
    }
    const files = o.files ?? [];
    for (const file of files) {
      const problem = validateSandboxPath(file.path);
      if (problem) throw new InvalidArgumentError(`files ${file.path}: ${problem}`, { field: "files" });
      if (file.mode !== undefined) {
        const modeProblem = file.mode === 0 ? "grants no access" : validateMode(file.mode);
        if (modeProblem)
          throw new InvalidArgumentError(`files ${file.path}: mode ${modeProblem}`, { field: "files" });
      }
    }
    const specs: FileSpec[] = files
      .filter((file): file is Extract<CreateFile, { from: string }> => "from" in file)
      .map((file) => ({
        raw: `${file.from}:${file.path}`,
        local: file.from,
        remote: file.path,
        mode: file.mode ?? DEFAULT_FILE_MODE,
      }));
    const localSizes = checkFileSpecs(specs);
    const contents = files.map((file) =>
      "content" in file
        ? typeof file.content === "string"
          ? Buffer.from(file.content)
          : Buffer.from(file.content.buffer, file.content.byteOffset, file.content.byteLength)
        : undefined,
    );
    let nextLocal = 0;
    const sizes = contents.map((content) => content?.length ?? localSizes[nextLocal++]!);
    // The policy code (and its YAML parser) loads only for a create that brings a policy.
    const policy =
      o.policy === undefined ? undefined : await (await import("./policy.js")).policyOf(o.policy);
    const uploads = await planUploads(o.uploads ?? []);
    // The main command waits for the uploads (as `sandbox create --upload` holds it).
    const gated = uploads.length > 0 && command.length > 0;

    // ---- the gateway ----
    const created = await submitCreate(link, {
      request: {
        spec: {
          logLevel: "",
          environment,
          policy,
          providers: [],
          command,
          tty: o.tty ?? false,
          ...(ttlSeconds !== undefined ? { ttlSeconds } : {}),
          ...(template || o.from
            ? {
                template: SandboxTemplate.fromPartial({
                  ...(template ? { resources: template } : {}),
                  image: o.from,
                }),
              }
            : {}),
          files: files.map((file, i) => ({
            path: normalizeSandboxPath(file.path) ?? file.path,
            content: Buffer.alloc(0),
            mode: file.mode ?? DEFAULT_FILE_MODE,
            size: sizes[i]!,
            sha256: "",
          })),
        },
        name: o.name ?? "",
        labels,
        annotations: gated ? { [ANNOTATION_START_ON_ATTACH]: "true" } : {},
        workspace: link.workspace,
      },
      sizes,
      // Bytes given are copied into their slots; local files are read into theirs.
      fill: async (slots) => {
        const localSlots: Buffer[] = [];
        contents.forEach((content, i) => {
          if (content) content.copy(slots[i]!);
          else localSlots.push(slots[i]!);
        });
        await readFileContents(specs, localSlots);
      },
      refuseTtl: () => ttlUnsupported(link.gateway().name, "ttl"),
      refuseFiles: () => link.unsupported(CAPABILITY_SANDBOX_FILES, "files"),
      holdsForUploads: gated,
      signal: o.signal,
    });
    const name = created.metadata!.name;
    o.onProgress?.({ kind: "created", message: `Created sandbox: ${name}` });
    try {
      const ready = await link.waitReady(created, {
        signal: o.signal,
        timeoutMs: o.timeoutMs,
        onProgress: o.onProgress,
      });
      const sandbox = new Sandbox(link, ready);
      if (uploads.length > 0) {
        await sandbox.uploadPlans(uploads, o.signal ? { signal: o.signal } : {});
      }
      if (gated) await sandbox.startMain();
      return sandbox;
    } catch (error) {
      await link.delete(name).catch(() => undefined);
      throw error;
    }
  }

  /**
   * A handle on an existing sandbox (`await using` on it closes its
   * connection, and does not delete it); `timeoutMs` bounds the lookup.
   */
  get(name: string, options: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<Sandbox> {
    return typed(
      async () =>
        new Sandbox(this.#link, await this.#link.sandbox(name, callOptions(options)), {
          deleteOnDispose: false,
        }),
    );
  }

  /**
   * @internal Runs a command over the gateway's interactive exec stream
   * (`sandbox exec`): stdin streamed live, a terminal, the gateway's timeout.
   */
  execInteractive(options: InteractiveExecOptions): Promise<InteractiveExec> {
    return typed(() => execInteractive(this.#link, options));
  }

  /** @internal Sends a CreateSandbox the caller built (the CLI's create, which shows its own progress). */
  submitCreate(submission: CreateSubmission): Promise<SandboxInfo> {
    return typed(() => submitCreate(this.#link, submission));
  }

  /** @internal A handle on a sandbox the caller already holds the state of (the CLI's create). */
  handle(info: SandboxInfo): Sandbox {
    return new Sandbox(this.#link, info, { deleteOnDispose: false });
  }

  /** The sandboxes of the workspace, page by page, optionally those matching a label selector. */
  list(options: ListOptions = {}): AsyncIterable<SandboxInfo> {
    const link = this.#link;
    if (options.selector) {
      try {
        parseSelector(options.selector);
      } catch (error) {
        throw new InvalidArgumentError((error as Error).message, { field: "selector" });
      }
    }
    const pageSize = options.limit ?? 100;
    return {
      [Symbol.asyncIterator]: async function* () {
        for (let offset = options.offset ?? 0; ; offset += pageSize) {
          const { sandboxes } = await typed(async () => {
            const { client, target } = await link.grpc();
            return link.call(
              target,
              client.listSandboxes.bind(client),
              {
                limit: pageSize,
                offset,
                labelSelector: options.selector ?? "",
                workspace: link.workspace,
                allWorkspaces: false,
              },
              options.signal ? { signal: options.signal } : {},
            );
          });
          yield* sandboxes;
          if (options.limit !== undefined || sandboxes.length < pageSize) return;
        }
      },
    };
  }

  /** The sandbox's state each time it changes, until the signal aborts or the sandbox is deleted. */
  watch(name: string, options: { signal?: AbortSignal } = {}): AsyncIterable<SandboxInfo> {
    const link = this.#link;
    return {
      [Symbol.asyncIterator]: async function* () {
        try {
          const { metadata } = await link.sandbox(name, options);
          const request = WatchSandboxRequest.fromPartial({ id: metadata!.id, followStatus: true });
          for await (const event of link.watch(request, options.signal)) {
            if (event.payload?.$case === "sandbox") yield event.payload.value;
          }
        } catch (error) {
          throw toApiError(error);
        }
      },
    };
  }

  /** @internal Waits for a created or restarted sandbox to be Ready (the CLI shows the progress). */
  waitReady(created: SandboxInfo, options: Parameters<Link["waitReady"]>[1]): Promise<SandboxInfo> {
    return typed(() => this.#link.waitReady(created, options));
  }

  /** @internal StartSandbox by name, without the wait (the CLI shows the wait's progress itself). */
  requestStart(name: string, options: { signal?: AbortSignal } = {}): Promise<SandboxInfo> {
    return typed(() => startSandbox(this.#link, name, options));
  }

  /**
   * Starts stopped sandbox `name` again; resolves with its state once Ready
   * (or at once, `alreadyRunning`, when it was running).
   */
  start(
    name: string,
    options: { signal?: AbortSignal; onProgress?: (event: ProgressEvent) => void } = {},
  ): Promise<{ sandbox: SandboxInfo; alreadyRunning: boolean }> {
    return typed(async () => {
      const started = await startSandbox(this.#link, name, options);
      if (started.status?.phase === SandboxPhase.SANDBOX_PHASE_READY)
        return { sandbox: started, alreadyRunning: true };
      const sandbox = await this.#link.waitReady(started, { ...options, eventTail: 0 });
      return { sandbox, alreadyRunning: false };
    });
  }

  /** Stops sandbox `name` (its processes end, its files stay); resolves with its state once Stopped. */
  stop(name: string, options: { signal?: AbortSignal } = {}): Promise<SandboxInfo | undefined> {
    return typed(() => stopSandbox(this.#link, name, options));
  }

  /** Extends sandbox `name`'s lifetime to `ttl` from now (seconds, or "30m", "2h", "1d"). */
  renew(
    name: string,
    ttl: number | string,
    options: { signal?: AbortSignal } = {},
  ): Promise<SandboxInfo | undefined> {
    return typed(() => renewSandbox(this.#link, name, ttl, options));
  }

  /** Deletes sandbox `name`; resolves false when there was none. */
  delete(name: string, options: { signal?: AbortSignal } = {}): Promise<boolean> {
    return typed(() => this.#link.delete(name, options));
  }

  /** The images the gateway keeps (`--from`), with the sandboxes that run each. */
  listImages(options: { signal?: AbortSignal } = {}): Promise<ImageInfo[]> {
    return typed(() => listImages(this.#link, options));
  }

  /** Pulls `source` into the gateway now, stored or not (a tag may name another image since). */
  pullImage(source: string, options: { signal?: AbortSignal } = {}): Promise<ImageInfo> {
    return typed(() => pullImage(this.#link, source, options));
  }

  /** Removes a stored image (by digest or source) no sandbox runs; resolves with its digest. */
  removeImage(image: string, options: { signal?: AbortSignal } = {}): Promise<string> {
    return typed(() => removeImage(this.#link, image, options));
  }

  /** Removes every stored image no sandbox runs. */
  pruneImages(options: { signal?: AbortSignal } = {}): Promise<{ digests: string[]; freedBytes: number }> {
    return typed(() => pruneImages(this.#link, options));
  }

  /** Closes the gateway channel. Sandbox handles keep their own SSH connections: close them, or use `await using`. */
  close(): void {
    this.#link.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }
}

/** Plans `create`'s uploads; the tar engine loads only when there are some. */
async function planUploads(uploads: NonNullable<CreateOptions["uploads"]>): Promise<UploadPlan[]> {
  if (uploads.length === 0) return [];
  const { planUpload } = await import("../transport/tar/upload.js");
  const plans: UploadPlan[] = [];
  for (const upload of uploads) {
    plans.push(
      await planUpload(upload.from, upload.to, {
        gitIgnore: upload.gitIgnore ?? true,
        git: upload.git === true,
      }),
    );
  }
  return plans;
}
