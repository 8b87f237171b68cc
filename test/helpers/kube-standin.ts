// A stand-in for the Kubernetes API server: the subset the Kubernetes driver
// calls (pods, secrets, persistentvolumeclaims, events: create, get, list,
// watch, delete), over plain HTTP, for tests on a machine where no cluster
// can run. It keeps objects with resourceVersions and a history, so a watch
// resumed from a version gets every change after it, checks a delete's
// preconditions as the API server does (409 Conflict), and lets a test play
// the cluster: change a pod's status, post an event, drop or hold watches,
// and leave a call unanswered. Every call is recorded (verb and resource).

import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

type Json = Record<string, unknown> & { metadata?: Record<string, unknown> };
type Collection = "pods" | "secrets" | "persistentvolumeclaims" | "events";
const COLLECTIONS = new Set<string>(["pods", "secrets", "persistentvolumeclaims", "events"]);

interface Change {
  resourceVersion: number;
  collection: Collection;
  type: "ADDED" | "MODIFIED" | "DELETED";
  object: Json;
}

export interface Call {
  verb: string;
  resource: string;
  /** The query's resourceVersion, for a watch. */
  resourceVersion?: string | undefined;
  /** The response's status code; 0 when none was sent. */
  status: number;
  body?: Json | undefined;
}

interface Watcher {
  collection: Collection;
  response: ServerResponse;
}

export class KubeStandin {
  private readonly server: Server;
  private version = 1;
  private readonly objects = new Map<Collection, Map<string, Json>>();
  private readonly history: Change[] = [];
  private readonly watchers = new Set<Watcher>();
  /** Responses held open by `hang`, ended at close. */
  private readonly hung = new Set<ServerResponse>();
  private readonly hanging = new Set<string>();
  /** While set, watch connections are refused (503) and changes only recorded. */
  private watchesDown = false;
  readonly calls: Call[] = [];
  private readonly listeners = new Set<() => void>();
  port = 0;

  constructor() {
    for (const collection of COLLECTIONS) this.objects.set(collection as Collection, new Map());
    this.server = createServer((request, response) => {
      this.handle(request, response).catch((error: unknown) => {
        response.writeHead(500).end(String(error));
      });
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  /** A kubeconfig naming this server, as a file's text. */
  kubeconfig(namespace: string): string {
    return JSON.stringify({
      apiVersion: "v1",
      kind: "Config",
      clusters: [
        {
          name: "standin",
          cluster: { server: `http://127.0.0.1:${this.port}`, "insecure-skip-tls-verify": true },
        },
      ],
      users: [{ name: "standin", user: { token: "standin" } }],
      contexts: [{ name: "standin", context: { cluster: "standin", user: "standin", namespace } }],
      "current-context": "standin",
    });
  }

  async close(): Promise<void> {
    for (const response of this.hung) response.destroy();
    for (const watcher of this.watchers) watcher.response.destroy();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  // ---- playing the cluster ---------------------------------------------------

  /** Calls of `verb` on `resource` get no answer from now on. */
  hang(verb: string, resource: string): void {
    this.hanging.add(`${verb} ${resource}`);
  }

  /** Calls of `verb` on `resource` are answered again (those held stay unanswered). */
  answer(verb: string, resource: string): void {
    this.hanging.delete(`${verb} ${resource}`);
  }

  /** Drops every watch and refuses new ones until watchesUp; changes meanwhile are kept in the history. */
  watchesDownNow(): void {
    this.watchesDown = true;
    for (const watcher of this.watchers) watcher.response.destroy();
    this.watchers.clear();
  }

  watchesUp(): void {
    this.watchesDown = false;
  }

  pod(name: string): Json | undefined {
    return this.objects.get("pods")!.get(name);
  }

  names(collection: Collection): string[] {
    return [...this.objects.get(collection)!.keys()];
  }

  /** Changes a pod as a kubelet would (its status); a new resourceVersion. */
  updatePod(name: string, change: (pod: Json) => void): void {
    const pod = this.pod(name);
    if (!pod) throw new Error(`no pod ${name}`);
    change(pod);
    this.store("pods", pod, "MODIFIED");
  }

  /** An object as stored, by collection and name. */
  object(collection: Collection, name: string): Json | undefined {
    return this.objects.get(collection)!.get(name);
  }

  /** Adds a pod as another client would (a uid and a version given); its name. */
  addPod(pod: Json): string {
    pod.metadata = { ...pod.metadata, uid: randomUUID() };
    this.store("pods", pod, "ADDED");
    return pod.metadata.name as string;
  }

  /** Deletes a pod as someone with kubectl would. */
  deletePod(name: string): void {
    const pod = this.pod(name);
    if (!pod) throw new Error(`no pod ${name}`);
    this.objects.get("pods")!.delete(name);
    this.record("pods", pod, "DELETED");
  }

  /** Puts another pod of the same name in place of this one (a recreate): a new uid. */
  recreatePod(name: string, annotations: Record<string, string>): Json {
    const old = this.pod(name);
    if (!old) throw new Error(`no pod ${name}`);
    this.objects.get("pods")!.delete(name);
    this.record("pods", old, "DELETED");
    const pod: Json = { ...old, metadata: { ...old.metadata, uid: randomUUID(), annotations } };
    this.store("pods", pod, "ADDED");
    return pod;
  }

  /** Posts an event about a pod, as the scheduler or kubelet would. */
  podEvent(podName: string, reason: string, message: string, type = "Normal"): void {
    const pod = this.pod(podName);
    this.store(
      "events",
      {
        apiVersion: "v1",
        kind: "Event",
        metadata: { name: `${podName}.${randomUUID().slice(0, 8)}`, uid: randomUUID() },
        involvedObject: { kind: "Pod", name: podName, uid: pod?.metadata?.uid },
        reason,
        message,
        type,
        count: 1,
      },
      "ADDED",
    );
  }

  /** Resolves once `probe` holds, looked at after every call and change; fails naming the step. */
  until<T>(step: string, timeoutMs: number, probe: () => T | undefined): Promise<T> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const value = probe();
        if (value === undefined) return false;
        this.listeners.delete(listener);
        clearTimeout(timer);
        resolve(value);
        return true;
      };
      const listener = (): void => {
        check();
      };
      const timer = setTimeout(() => {
        this.listeners.delete(listener);
        reject(new Error(`stand-in: ${step} did not happen within ${timeoutMs} ms`));
      }, timeoutMs);
      if (!check()) this.listeners.add(listener);
    });
  }

  private changed(): void {
    for (const listener of [...this.listeners]) listener();
  }

  // ---- the API ---------------------------------------------------------------

  private store(collection: Collection, object: Json, type: Change["type"]): void {
    this.objects.get(collection)!.set(object.metadata!.name as string, object);
    this.record(collection, object, type);
  }

  private record(collection: Collection, object: Json, type: Change["type"]): void {
    this.version += 1;
    object.metadata = { ...object.metadata, resourceVersion: String(this.version) };
    const change = { resourceVersion: this.version, collection, type, object: structuredClone(object) };
    this.history.push(change);
    if (!this.watchesDown) {
      for (const watcher of this.watchers) {
        if (watcher.collection === collection) this.send(watcher, change);
      }
    }
    this.changed();
  }

  private send(watcher: Watcher, change: Change): void {
    watcher.response.write(`${JSON.stringify({ type: change.type, object: change.object })}\n`);
  }

  private async handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const url = new URL(request.url ?? "/", "http://standin");
    const match = /^\/api\/v1\/namespaces\/([^/]+)\/([a-z]+)(?:\/([^/]+))?$/.exec(url.pathname);
    const chunks: Buffer[] = [];
    for await (const chunk of request) chunks.push(chunk as Buffer);
    const body = chunks.length > 0 ? (JSON.parse(Buffer.concat(chunks).toString()) as Json) : undefined;
    if (!match || !COLLECTIONS.has(match[2]!)) {
      response.writeHead(404).end();
      return;
    }
    const collection = match[2] as Collection;
    const name = match[3];
    const watch = url.searchParams.get("watch") === "true";
    const verb =
      request.method === "POST"
        ? "create"
        : request.method === "DELETE"
          ? "delete"
          : name
            ? "get"
            : watch
              ? "watch"
              : "list";
    const call: Call = {
      verb,
      resource: collection,
      resourceVersion: url.searchParams.get("resourceVersion") ?? undefined,
      status: 0,
      body,
    };
    this.calls.push(call);
    const answer = (status: number, object: Json): void => {
      call.status = status;
      response.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(object));
      this.changed();
    };
    const failure = (status: number, reason: string, message: string): void =>
      answer(status, { kind: "Status", apiVersion: "v1", status: "Failure", reason, message, code: status });
    if (this.hanging.has(`${verb} ${collection}`)) {
      this.hung.add(response);
      this.changed();
      return;
    }
    const objects = this.objects.get(collection)!;
    switch (verb) {
      case "watch": {
        if (this.watchesDown) {
          failure(503, "ServiceUnavailable", "the stand-in's watches are down");
          return;
        }
        call.status = 200;
        response.writeHead(200, { "content-type": "application/json" });
        response.flushHeaders();
        const watcher = { collection, response };
        const from = Number(url.searchParams.get("resourceVersion") ?? this.version);
        for (const change of this.history) {
          if (change.collection === collection && change.resourceVersion > from) this.send(watcher, change);
        }
        this.watchers.add(watcher);
        response.on("close", () => this.watchers.delete(watcher));
        this.changed();
        return;
      }
      case "list":
        answer(200, {
          kind: "List",
          apiVersion: "v1",
          metadata: { resourceVersion: String(this.version) },
          items: [...objects.values()],
        });
        return;
      case "get": {
        const object = objects.get(name!);
        if (object) answer(200, object);
        else failure(404, "NotFound", `${collection} "${name}" not found`);
        return;
      }
      case "create": {
        const object = body!;
        const objectName = object.metadata!.name as string;
        if (objects.has(objectName)) {
          failure(409, "AlreadyExists", `${collection} "${objectName}" already exists`);
          return;
        }
        object.metadata = {
          ...object.metadata,
          uid: randomUUID(),
          creationTimestamp: new Date().toISOString(),
        };
        if (collection === "pods") object.status = { phase: "Pending" };
        this.store(collection, object, "ADDED");
        answer(201, object);
        return;
      }
      case "delete": {
        const object = objects.get(name!);
        if (!object) {
          failure(404, "NotFound", `${collection} "${name}" not found`);
          return;
        }
        const preconditions = (body?.preconditions ?? {}) as { uid?: string; resourceVersion?: string };
        if (preconditions.uid !== undefined && preconditions.uid !== object.metadata!.uid) {
          failure(
            409,
            "Conflict",
            `Precondition failed: UID in precondition: ${preconditions.uid}, UID in object meta: ${object.metadata!.uid}`,
          );
          return;
        }
        if (
          preconditions.resourceVersion !== undefined &&
          preconditions.resourceVersion !== object.metadata!.resourceVersion
        ) {
          failure(
            409,
            "Conflict",
            `Precondition failed: ResourceVersion in precondition: ${preconditions.resourceVersion}, ResourceVersion in object meta: ${object.metadata!.resourceVersion}`,
          );
          return;
        }
        objects.delete(name!);
        this.record(collection, object, "DELETED");
        answer(200, object);
        return;
      }
    }
  }
}
