// The deploy manifests under deploy/kubernetes/: each validates against the
// pinned Kubernetes schema (kubernetes-models 5.1.0, Kubernetes 1.36), and
// the Role grants exactly the calls the driver makes: read from the driver's
// source (each client method and watch path), and from DRIVER_CALLS, which
// every call passes through.

import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Deployment } from "kubernetes-models/apps/v1/Deployment";
import { Role } from "kubernetes-models/rbac.authorization.k8s.io/v1/Role";
import { RoleBinding } from "kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding";
import { Namespace } from "kubernetes-models/v1/Namespace";
import { PersistentVolumeClaim } from "kubernetes-models/v1/PersistentVolumeClaim";
import { Service } from "kubernetes-models/v1/Service";
import { ServiceAccount } from "kubernetes-models/v1/ServiceAccount";
import { describe, expect, it } from "vitest";
import { parseAllDocuments } from "yaml";
import { DRIVER_CALLS } from "../../src/gateway/kubernetes.js";
import { ROOT } from "../helpers/cli.js";

const DEPLOY = join(ROOT, "deploy", "kubernetes");
type Manifest = { apiVersion: string; kind: string; metadata: { name: string } } & Record<string, unknown>;

function manifests(): Manifest[] {
  return readdirSync(DEPLOY)
    .filter((file) => file.endsWith(".yaml"))
    .flatMap((file) =>
      parseAllDocuments(readFileSync(join(DEPLOY, file), "utf8")).map((document) => {
        if (document.errors.length > 0) throw new Error(`${file}: ${document.errors[0]!.message}`);
        return document.toJS() as Manifest;
      }),
    );
}

/** `verb resource` for each call a set of rules or calls names. */
function callSet(entries: Iterable<[string, readonly string[]]>): string[] {
  return [...entries].flatMap(([resource, verbs]) => verbs.map((verb) => `${verb} ${resource}`)).sort();
}

/** The calls the driver's source makes: each CoreV1Api method it names, and each path it watches. */
function sourceCalls(): string[] {
  const source = readFileSync(join(ROOT, "src", "gateway", "kubernetes.ts"), "utf8");
  const verbs: Record<string, string> = { create: "create", read: "get", list: "list", delete: "delete" };
  const calls = new Set<string>();
  for (const [, verb, kind] of source.matchAll(
    /this\.api\.(create|read|list|delete|replace|patch)Namespaced(\w+)\(/g,
  )) {
    const resource = `${kind!.toLowerCase()}s`;
    calls.add(`${verbs[verb!] ?? verb} ${resource}`);
  }
  for (const [, resource] of source.matchAll(/`\/api\/v1\/namespaces\/\$\{[^}]+\}\/(\w+)`/g)) {
    calls.add(`watch ${resource}`);
  }
  return [...calls].sort();
}

describe("deploy/kubernetes", () => {
  it("validates every manifest against the pinned Kubernetes schema", () => {
    const models: Record<string, new (data: never) => { validate(): void }> = {
      Namespace,
      ServiceAccount,
      Role,
      RoleBinding,
      PersistentVolumeClaim,
      Deployment,
      Service,
    };
    const kinds = manifests().map((manifest) => {
      const Model = models[manifest.kind];
      if (!Model) throw new Error(`no schema model for ${manifest.kind} ${manifest.metadata.name}`);
      new Model(manifest as never).validate();
      return manifest.kind;
    });
    expect(kinds.sort()).toEqual(
      [
        "Deployment",
        "Namespace",
        "PersistentVolumeClaim",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
      ].sort(),
    );
  });

  it("grants the gateway exactly the calls the driver makes, and nothing cluster-wide", () => {
    const all = manifests();
    const role = all.find((manifest) => manifest.kind === "Role") as unknown as {
      rules: { apiGroups: string[]; resources: string[]; verbs: string[] }[];
    };
    expect(all.some((manifest) => manifest.kind.startsWith("Cluster"))).toBe(false);
    for (const rule of role.rules) expect(rule.apiGroups).toEqual([""]);
    const granted = callSet(
      role.rules.flatMap((rule) =>
        rule.resources.map((resource) => [resource, rule.verbs] as [string, string[]]),
      ),
    );
    const declared = callSet(Object.entries(DRIVER_CALLS));
    expect(sourceCalls()).toEqual(declared);
    expect(granted).toEqual(declared);
  });

  it("runs the gateway under that Role's service account", () => {
    const all = manifests();
    const deployment = all.find((manifest) => manifest.kind === "Deployment") as unknown as {
      spec: { template: { spec: { serviceAccountName: string } } };
    };
    const binding = all.find((manifest) => manifest.kind === "RoleBinding") as unknown as {
      roleRef: { name: string };
      subjects: { name: string }[];
    };
    expect(binding.subjects.map((subject) => subject.name)).toEqual([
      deployment.spec.template.spec.serviceAccountName,
    ]);
    expect(binding.roleRef.name).toBe(all.find((manifest) => manifest.kind === "Role")!.metadata.name);
  });
});
