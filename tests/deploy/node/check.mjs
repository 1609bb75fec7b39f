// Static checks of the deployment files, run by scripts/deploy-check.sh:
//   - renders the Helm chart over the values matrix of tests/deploy/matrix.yaml
//     (helm lint --strict and helm template per case; NOTES.txt too), and
//     reads the plain manifests of deploy/k8s/;
//   - validates every Kubernetes object twice: against the JSON schema of
//     kubernetes-models (or @kubernetes-models/prometheus-operator for the
//     CRDs), and through the TypeScript compiler against the same package's
//     interfaces, which also rejects unknown fields;
//   - asserts what the deployment depends on: GPU limit, node selector, gRPC
//     probes, ports, grace period, security context, model volume, Service,
//     ServiceMonitor, PDB and HPA wiring, and that the chart sets every
//     `m40llm serve` flag;
//   - type-checks the Grafana dashboard against @grafana/schema (Dashboard,
//     and the timeseries and stat panel options) and checks its layout,
//     variables and queries;
//   - checks that every metric the dashboard and the alert rules name is in
//     the /metrics of a real server, with the label values they match on;
//   - checks that every value in the chart's values.yaml is documented;
//   - writes, for promtool, the dashboard's queries as recording rules and
//     the example Prometheus config with Kubernetes discovery swapped out.
//
// Usage: node check.mjs --root REPO --helm HELM --out DIR --serve-help FILE
//        [--metrics-url URL]   (without it the metric-name check fails)
// Prints one line per check; exits 1 after listing every failure.
import { spawnSync } from "node:child_process";
import { createRequire } from "node:module";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";

const require = createRequire(import.meta.url);
const YAML = require("yaml");
const ts = require("typescript");

const here = path.dirname(fileURLToPath(import.meta.url));
const { values: args } = parseArgs({
  options: {
    root: { type: "string" },
    helm: { type: "string" },
    out: { type: "string" },
    "serve-help": { type: "string" },
    "metrics-url": { type: "string" },
  },
});
for (const k of ["root", "helm", "out", "serve-help"]) {
  if (!args[k]) throw new Error(`missing --${k}`);
}
const root = path.resolve(args.root);
const out = path.resolve(args.out);
fs.mkdirSync(out, { recursive: true });

const failures = [];
function fail(where, msg) {
  const line = `${where}: ${msg}`;
  if (!failures.includes(line)) failures.push(line);
}
function check(where, cond, msg) {
  if (!cond) fail(where, msg);
  return Boolean(cond);
}
function ok(msg) {
  console.log(`ok   ${msg}`);
}
const rel = (p) => path.relative(root, p);
const readText = (p) => fs.readFileSync(p, "utf8");
const deepEqual = (a, b) => JSON.stringify(sortKeys(a)) === JSON.stringify(sortKeys(b));
function sortKeys(v) {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.keys(v).sort().map((k) => [k, sortKeys(v[k])]));
  }
  return v;
}

const chartDir = path.join(root, "helm", "m40llm");
const dashboardPath = path.join(root, "deploy", "grafana", "m40llm.json");
const rulesPath = path.join(root, "deploy", "prometheus", "m40llm-rules.yml");
const dashboard = JSON.parse(readText(dashboardPath));
const rules = YAML.parse(readText(rulesPath));

// ---------------------------------------------------------------- renders

// One parsed object of a render: its case, index and kind.
class Doc {
  constructor(caseName, file, index, obj) {
    Object.assign(this, { caseName, file, index, obj });
    this.kind = obj?.kind;
    this.where = `${caseName}: ${this.kind ?? "?"}/${obj?.metadata?.name ?? index}`;
  }
}

function parseDocs(caseName, file, text) {
  const docs = [];
  YAML.parseAllDocuments(text).forEach((d, i) => {
    if (d.errors.length) {
      fail(`${caseName}: ${rel(file)}`, `YAML: ${d.errors[0].message}`);
      return;
    }
    const obj = d.toJSON();
    if (obj !== null) docs.push(new Doc(caseName, file, i, obj));
  });
  return docs;
}

const helm = path.resolve(args.helm);
function runHelm(argv, where) {
  const r = spawnSync(helm, argv, { encoding: "utf8", cwd: root });
  if (r.error) throw new Error(`cannot run ${helm}: ${r.error.message}`);
  if (r.status !== 0 && where) fail(where, `helm ${argv[0]} failed:\n${r.stdout}${r.stderr}`);
  return r;
}

// A copy of the chart whose NOTES.txt also renders as a template
// (helm template leaves NOTES out), so that its errors show up here rather
// than at install time.
const notesChart = path.join(out, "chart-with-notes");
fs.rmSync(notesChart, { recursive: true, force: true });
fs.cpSync(chartDir, notesChart, { recursive: true });
fs.writeFileSync(
  path.join(notesChart, "templates", "zz-notes-render.yaml"),
  `{{- define "m40llm.notesRender" }}${readText(path.join(chartDir, "templates", "NOTES.txt"))}{{- end }}\n` +
    `notes: {{ include "m40llm.notesRender" . | toJson }}\n`,
);

const matrix = YAML.parse(readText(path.join(root, "tests", "deploy", "matrix.yaml")));
const cases = [];
for (const c of matrix.cases) {
  const where = `helm ${c.name}`;
  const valuesFile = path.join(out, `values-${c.name}.yaml`);
  fs.writeFileSync(valuesFile, YAML.stringify(c.values ?? {}));
  const common = ["m40llm", chartDir, "--namespace", "llm", "-f", valuesFile];
  if (c.expectFailure) {
    const r = runHelm(["template", ...common]);
    const text = `${r.stdout}${r.stderr}`;
    if (check(where, r.status !== 0, `expected helm template to fail (${c.expectFailure})`) &&
        check(where, text.includes(c.expectFailure), `error lacks "${c.expectFailure}":\n${text}`)) {
      ok(`${where}: refused as expected ("${c.expectFailure}")`);
    }
    continue;
  }
  const lint = runHelm(["lint", "--strict", chartDir, "-f", valuesFile]);
  check(where, lint.status === 0, `helm lint --strict failed:\n${lint.stdout}${lint.stderr}`);
  const r = runHelm(["template", ...common], where);
  if (r.status !== 0) continue;
  const file = path.join(out, `helm-${c.name}.yaml`);
  fs.writeFileSync(file, r.stdout);
  const notes = runHelm(["template", "m40llm", notesChart, "--namespace", "llm", "-f", valuesFile,
                         "--show-only", "templates/zz-notes-render.yaml"], `${where} NOTES.txt`);
  if (notes.status === 0) {
    const text = YAML.parse(notes.stdout).notes;
    check(where, /port-forward/.test(text) && /svc:/.test(text), "NOTES.txt does not say how to reach the service");
    fs.writeFileSync(path.join(out, `notes-${c.name}.txt`), text);
  }
  cases.push({ name: c.name, expect: c.expect ?? {}, docs: parseDocs(c.name, file, r.stdout), file });
}

const plainDir = path.join(root, "deploy", "k8s");
const plainDocs = [];
for (const f of fs.readdirSync(plainDir).filter((f) => /\.ya?ml$/.test(f)).sort()) {
  plainDocs.push(...parseDocs("deploy/k8s", path.join(plainDir, f), readText(path.join(plainDir, f))));
}
cases.push({ name: "deploy/k8s", expect: matrix.plain ?? {}, docs: plainDocs, file: plainDir });

// ---------------------------------------------------------------- schemas

// The kubernetes-models module of an object: apps/v1 Deployment ->
// kubernetes-models/apps/v1/Deployment; CRDs of the Prometheus Operator come
// from @kubernetes-models/prometheus-operator.
function modelModule(apiVersion, kind) {
  const group = apiVersion.includes("/") ? apiVersion : `v1`;
  if (apiVersion.startsWith("monitoring.coreos.com/")) {
    return `@kubernetes-models/prometheus-operator/${apiVersion}/${kind}`;
  }
  return `kubernetes-models/${group}/${kind}`;
}

const tsSources = new Map(); // virtual file name -> { text, where, offset }
let tsCounter = 0;
function addTypeCheck(where, importLines, typeExpr, value, prelude = "") {
  const json = JSON.stringify(value, null, 2);
  const head = `${importLines}\n${prelude}export const value: ${typeExpr} = `;
  const name = path.join(here, "__typecheck__", `t${tsCounter++}.ts`);
  tsSources.set(name, { text: `${head}${json};\n`, where, offset: head.split("\n").length - 1, json });
}

for (const c of cases) {
  for (const d of c.docs) {
    const { apiVersion, kind } = d.obj;
    if (!check(d.where, apiVersion && kind, "no apiVersion/kind")) continue;
    const mod = modelModule(apiVersion, kind);
    let Model;
    try {
      Model = require(mod)[kind];
    } catch (e) {
      fail(d.where, `no model for ${apiVersion} ${kind} (${mod}): ${e.message}`);
      continue;
    }
    try {
      new Model(d.obj).validate();
    } catch (e) {
      fail(d.where, `schema: ${e.message}`);
    }
    addTypeCheck(d.where, `import type { I${kind} } from "${mod}";`, `I${kind}`, d.obj);
  }
}

// The dashboard, typed by @grafana/schema. Its string enums are TypeScript
// enums there, which JSON strings cannot be; Json<T> turns every enum into
// the union of its values (and leaves the rest of the shape alone), so the
// check keeps literal types, required fields and excess-property errors.
const dashboardPrelude = `
type Json<T> =
  T extends string ? (string extends T ? string : \`\${T}\`)
  : T extends number | boolean | null | undefined ? T
  : T extends ReadonlyArray<infer U> ? Array<Json<U>>
  : T extends object ? { [K in keyof T]: Json<T[K]> }
  : T;
type Defaults<Custom> = Omit<Json<G.FieldConfig>, "custom"> & { custom?: Custom };
type PanelOf<Type extends string, Options, Custom> =
  Omit<Json<G.Panel>, "type" | "options" | "fieldConfig"> & {
    type: Type;
    options: Options;
    fieldConfig: { defaults: Defaults<Custom>; overrides: Json<G.FieldConfigSource>["overrides"] };
  };
type TimeSeriesPanel = PanelOf<"timeseries", Json<TimeSeries.Options>, Json<TimeSeries.FieldConfig>>;
type StatPanel = PanelOf<"stat", Json<Stat.Options>, never>;
type Dashboard = Omit<Json<G.Dashboard>, "panels"> & {
  panels: Array<TimeSeriesPanel | StatPanel | Json<G.RowPanel>>;
};
`;
const grafanaRaw = "@grafana/schema/dist/esm/raw/composable";
addTypeCheck(
  rel(dashboardPath),
  [
    `import type * as G from "@grafana/schema";`,
    `import type * as TimeSeries from "${grafanaRaw}/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen";`,
    `import type * as Stat from "${grafanaRaw}/stat/panelcfg/x/StatPanelCfg_types.gen";`,
  ].join("\n"),
  "Dashboard",
  dashboard,
  dashboardPrelude,
);

function typeCheck() {
  const options = {
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.ESNext,
    moduleResolution: ts.ModuleResolutionKind.Bundler,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const { getSourceFile, fileExists, readFile } = host;
  host.getSourceFile = (name, lang, ...rest) =>
    tsSources.has(name)
      ? ts.createSourceFile(name, tsSources.get(name).text, lang)
      : getSourceFile.call(host, name, lang, ...rest);
  host.fileExists = (name) => tsSources.has(name) || fileExists.call(host, name);
  host.readFile = (name) => tsSources.get(name)?.text ?? readFile.call(host, name);
  const program = ts.createProgram([...tsSources.keys()], options, host);
  const diags = ts.getPreEmitDiagnostics(program);
  for (const dg of diags) {
    const src = dg.file && tsSources.get(dg.file.fileName);
    const msg = ts.flattenDiagnosticMessageText(dg.messageText, "\n  ");
    if (!src) {
      fail("typescript", msg);
      continue;
    }
    const { line } = dg.file.getLineAndCharacterOfPosition(dg.start ?? 0);
    const jsonLine = src.json.split("\n")[line - src.offset] ?? "";
    fail(src.where, `type: ${msg}\n    at: ${jsonLine.trim()}`);
  }
  return diags.length;
}

// ---------------------------------------------------------------- helpers

const byKind = (docs, kind) => docs.filter((d) => d.kind === kind).map((d) => d.obj);
const labelsMatch = (selector, labels) =>
  Object.entries(selector ?? {}).every(([k, v]) => labels?.[k] === v);
function envOf(container) {
  return Object.fromEntries((container.env ?? []).map((e) => [e.name, e.value]));
}
function portOf(listen) {
  const m = /:(\d+)$/.exec(listen ?? "");
  return m ? Number(m[1]) : undefined;
}

// Flags of `m40llm serve` and their environment variables, from --help.
const serveEnvs = [...readText(args["serve-help"]).matchAll(/\(Env:(M40LLM_[A-Z0-9_]+)\)/g)].map(
  (m) => m[1],
);
check("m40llm serve --help", serveEnvs.length >= 10, `found only ${serveEnvs.length} (Env:...) flags`);

// ---------------------------------------------------------------- assertions

function checkCase(c) {
  const { docs, expect } = c;
  const where = c.name;
  const kinds = docs.map((d) => d.kind).sort();
  if (expect.objects) {
    check(where, deepEqual(kinds, [...expect.objects].sort()),
          `objects ${JSON.stringify(kinds)}, expected ${JSON.stringify([...expect.objects].sort())}`);
  }
  const deployments = byKind(docs, "Deployment");
  if (!check(where, deployments.length === 1, `${deployments.length} Deployments`)) return;
  const dep = deployments[0];
  const pod = dep.spec.template.spec;
  const podLabels = dep.spec.template.metadata.labels;
  check(where, labelsMatch(dep.spec.selector.matchLabels, podLabels), "Deployment selector does not match its pod labels");
  const server = pod.containers.find((k) => k.name === "m40llm");
  if (!check(where, server, "no container named m40llm")) return;
  const env = envOf(server);

  // Replicas: absent under an HPA.
  if ("replicas" in expect) {
    check(where, (dep.spec.replicas ?? null) === expect.replicas,
          `replicas ${dep.spec.replicas}, expected ${expect.replicas}`);
  }

  // GPU limit and placement.
  const gpu = server.resources?.limits?.["nvidia.com/gpu"];
  check(where, (gpu ?? 0) === (expect.gpu ?? 1), `nvidia.com/gpu limit ${gpu}, expected ${expect.gpu ?? 1}`);
  check(where, server.resources?.requests?.cpu && server.resources?.requests?.memory,
        "server container lacks cpu/memory requests");
  check(where, server.resources?.limits?.memory, "server container lacks a memory limit");
  const wantSelector = expect.nodeSelector ?? { "nvidia.com/gpu.product": "Tesla-M40-24GB" };
  check(where, deepEqual(pod.nodeSelector ?? {}, wantSelector),
        `nodeSelector ${JSON.stringify(pod.nodeSelector)}, expected ${JSON.stringify(wantSelector)}`);
  const tolerates = (pod.tolerations ?? []).some(
    (t) => t.key === "nvidia.com/gpu" && t.effect === "NoSchedule" && (t.operator === "Exists" || t.value));
  check(where, tolerates === (expect.gpuToleration ?? true),
        `nvidia.com/gpu NoSchedule toleration ${tolerates ? "present" : "absent"}`);
  if (expect.env) {
    for (const [k, v] of Object.entries(expect.env)) {
      check(where, env[k] === String(v), `env ${k}=${env[k]}, expected ${v}`);
    }
  }
  check(where, env.M40LLM_BACKEND === (expect.backend ?? "cuda"), `M40LLM_BACKEND=${env.M40LLM_BACKEND}`);
  if (expect.allFlags) {
    const missing = serveEnvs.filter((e) => !(e in env));
    check(where, missing.length === 0, `serve flags not set: ${missing.join(", ")} (m40llm serve --help)`);
  }
  const unknown = Object.keys(env).filter((e) => e.startsWith("M40LLM_") && e !== "M40LLM_CACHE_DIR" &&
                                               !serveEnvs.includes(e));
  check(where, unknown.length === 0, `env ${unknown.join(", ")} is no serve flag`);

  // Ports and probes: gRPC health on the port the server listens on.
  const grpcPort = portOf(env.M40LLM_LISTEN);
  const metricsPort = portOf(env.M40LLM_METRICS_LISTEN);
  const ports = Object.fromEntries((server.ports ?? []).map((p) => [p.name, p.containerPort]));
  check(where, grpcPort === (expect.grpcPort ?? 50051) && ports.grpc === grpcPort,
        `gRPC port: container ${ports.grpc}, M40LLM_LISTEN ${env.M40LLM_LISTEN}`);
  check(where, metricsPort === (expect.metricsPort ?? 8002) && ports.metrics === metricsPort,
        `metrics port: container ${ports.metrics}, M40LLM_METRICS_LISTEN ${env.M40LLM_METRICS_LISTEN}`);
  for (const probe of ["startupProbe", "readinessProbe", "livenessProbe"]) {
    const p = server[probe];
    check(where, p?.grpc?.port === grpcPort && !p.grpc.service,
          `${probe} is not a gRPC health probe on port ${grpcPort}: ${JSON.stringify(p)}`);
  }
  const startup = server.startupProbe ?? {};
  check(where, (startup.periodSeconds ?? 10) * (startup.failureThreshold ?? 3) >= 300,
        "startupProbe allows less than 5 minutes to load the model");

  // Draining: the grace period outlasts preStop + drain timeout.
  const drain = Number(env.M40LLM_DRAIN_TIMEOUT ?? 30);
  const preStopCmd = server.lifecycle?.preStop?.exec?.command;
  const preStop = preStopCmd ? Number(preStopCmd[preStopCmd.length - 1]) : 0;
  check(where, preStop === (expect.preStop ?? 5), `preStop sleep ${preStop}, expected ${expect.preStop ?? 5}`);
  const grace = pod.terminationGracePeriodSeconds ?? 30;
  check(where, grace > drain + preStop, `terminationGracePeriodSeconds ${grace} <= drain ${drain} + preStop ${preStop}`);
  if (expect.grace) check(where, grace === expect.grace, `terminationGracePeriodSeconds ${grace}, expected ${expect.grace}`);
  check(where, pod.enableServiceLinks === false, "enableServiceLinks is not false");

  // Security: non-root, read-only root, no capabilities, writable /tmp.
  check(where, pod.securityContext?.runAsNonRoot === true, "pod securityContext.runAsNonRoot is not true");
  for (const k of [...(pod.initContainers ?? []), ...pod.containers]) {
    const sc = k.securityContext ?? {};
    check(where, sc.readOnlyRootFilesystem === true, `${k.name}: readOnlyRootFilesystem is not true`);
    check(where, sc.allowPrivilegeEscalation === false, `${k.name}: allowPrivilegeEscalation is not false`);
    check(where, (sc.capabilities?.drop ?? []).includes("ALL"), `${k.name}: capabilities do not drop ALL`);
  }
  const volumes = Object.fromEntries((pod.volumes ?? []).map((v) => [v.name, v]));
  const mounts = Object.fromEntries((server.volumeMounts ?? []).map((m) => [m.mountPath, m]));
  check(where, mounts["/tmp"] && volumes[mounts["/tmp"].name]?.emptyDir, "/tmp is not an emptyDir");
  check(where, (env.M40LLM_CACHE_DIR ?? "").startsWith("/tmp/"), `M40LLM_CACHE_DIR=${env.M40LLM_CACHE_DIR} is not under /tmp`);

  // The model: demo (no volume), on a claim, or downloaded into one.
  const model = expect.model ?? "demo";
  const init = (pod.initContainers ?? []).find((k) => k.name === "fetch-model");
  if (model === "demo") {
    check(where, !("M40LLM_MODEL" in env) && !volumes.model && !init, "expected the demo model (no M40LLM_MODEL, no volume)");
  } else {
    const dir = path.posix.dirname(env.M40LLM_MODEL ?? "");
    const m = mounts[dir];
    const claim = m && volumes[m.name]?.persistentVolumeClaim?.claimName;
    check(where, claim && m.readOnly === true, `M40LLM_MODEL=${env.M40LLM_MODEL} is not on a read-only claim mount`);
    if (expect.claim) check(where, claim === expect.claim, `model claim ${claim}, expected ${expect.claim}`);
    const pvcs = byKind(docs, "PersistentVolumeClaim").map((p) => p.metadata.name);
    check(where, pvcs.includes(claim) === Boolean(expect.pvcCreated),
          `claim ${claim} ${pvcs.includes(claim) ? "is" : "is not"} created by the render`);
    if (model === "download" || init) {
      check(where, init, "no fetch-model init container");
      const ienv = init ? envOf(init) : {};
      const imount = init?.volumeMounts?.find((v) => v.name === m?.name);
      check(where, imount && !imount.readOnly, "fetch-model does not mount the model volume writable");
      check(where, ienv.MODEL_FILE === path.posix.basename(env.M40LLM_MODEL ?? ""),
            `fetch-model MODEL_FILE=${ienv.MODEL_FILE} is not the served file`);
      if (expect.url) check(where, ienv.MODEL_URL === expect.url, `MODEL_URL=${ienv.MODEL_URL}`);
      // The download script, for shellcheck and a run against file:// URLs.
      if (init?.command?.[0] === "/bin/sh" && init.command.length === 3) {
        const dir = path.join(out, "init-scripts");
        fs.mkdirSync(dir, { recursive: true });
        fs.writeFileSync(path.join(dir, `${c.name.replaceAll("/", "-")}.sh`),
                         `#!/bin/sh\nset ${init.command[1].replace("c", "")}\n${init.command[2]}`);
      } else {
        fail(where, "fetch-model is not a /bin/sh -ec script");
      }
    }
  }

  // Services: gRPC and metrics on the main one, gRPC on the headless one.
  const services = byKind(docs, "Service");
  const main = services.find((s) => s.spec.clusterIP !== "None");
  const headless = services.find((s) => s.spec.clusterIP === "None");
  if (check(where, main, "no ClusterIP Service")) {
    check(where, labelsMatch(main.spec.selector, podLabels), "Service selector does not match the pods");
    const sp = Object.fromEntries(main.spec.ports.map((p) => [p.name, p]));
    check(where, sp.grpc?.port === (expect.servicePort ?? 50051) && sp.grpc?.targetPort === "grpc",
          `Service grpc port ${JSON.stringify(sp.grpc)}`);
    check(where, sp.metrics?.port === 8002 && sp.metrics?.targetPort === "metrics",
          `Service metrics port ${JSON.stringify(sp.metrics)}`);
  }
  check(where, Boolean(headless) === (expect.headless ?? true), `headless Service ${headless ? "present" : "absent"}`);
  if (headless) {
    check(where, labelsMatch(headless.spec.selector, podLabels), "headless Service selector does not match the pods");
    check(where, headless.spec.ports.some((p) => p.name === "grpc" && p.targetPort === "grpc"), "headless Service lacks grpc");
    check(where, !headless.spec.publishNotReadyAddresses, "headless Service publishes pods that are not ready");
  }

  // ServiceMonitor: selects the main Service (only) and its metrics port.
  for (const sm of byKind(docs, "ServiceMonitor")) {
    const sel = sm.spec.selector?.matchLabels;
    check(where, main && labelsMatch(sel, main.metadata.labels), "ServiceMonitor does not select the Service");
    check(where, !headless || !labelsMatch(sel, headless.metadata.labels), "ServiceMonitor also selects the headless Service");
    const ep = sm.spec.endpoints?.[0] ?? {};
    check(where, ep.port === "metrics" && ep.path === "/metrics", `ServiceMonitor endpoint ${JSON.stringify(ep)}`);
    check(where, (ep.relabelings ?? []).some((r) => r.targetLabel === "job" && r.replacement === "m40llm"),
          "ServiceMonitor does not set job=m40llm, which the alert rules expect");
  }
  for (const pdb of byKind(docs, "PodDisruptionBudget")) {
    check(where, labelsMatch(pdb.spec.selector.matchLabels, podLabels), "PodDisruptionBudget does not select the pods");
  }
  for (const hpa of byKind(docs, "HorizontalPodAutoscaler")) {
    check(where, hpa.spec.scaleTargetRef.kind === "Deployment" && hpa.spec.scaleTargetRef.name === dep.metadata.name,
          "HPA does not target the Deployment");
    check(where, hpa.spec.metrics?.some((m) => m.type === "Pods" && m.pods.metric.name === "m40llm_queue_depth"),
          "HPA does not scale on the pods metric m40llm_queue_depth");
    check(where, dep.spec.replicas === undefined, "Deployment sets replicas under an HPA");
  }
  for (const cm of byKind(docs, "ConfigMap")) {
    const label = expect.dashboardLabel ?? { grafana_dashboard: "1" };
    check(where, labelsMatch(label, cm.metadata.labels), `dashboard ConfigMap lacks the sidecar label ${JSON.stringify(label)}`);
    const json = cm.data?.["m40llm.json"];
    check(where, json && deepEqual(JSON.parse(json), dashboard), "dashboard ConfigMap differs from deploy/grafana/m40llm.json");
  }
  for (const pr of byKind(docs, "PrometheusRule")) {
    check(where, deepEqual(pr.spec.groups, rules.groups), "PrometheusRule differs from deploy/prometheus/m40llm-rules.yml");
  }
  if (!failures.some((f) => f.startsWith(`${where}:`))) {
    ok(`${where}: ${docs.length} objects (${[...new Set(kinds)].join(", ")}) validated and asserted`);
  }
}
for (const c of cases) checkCase(c);

// ---------------------------------------------------------------- dashboard

function checkDashboard() {
  const where = rel(dashboardPath);
  const before = failures.length;
  const vars = Object.fromEntries((dashboard.templating?.list ?? []).map((v) => [v.name, v]));
  check(where, vars.datasource?.type === "datasource" && vars.datasource?.query === "prometheus",
        "no Prometheus datasource variable");
  for (const v of ["namespace", "pod"]) {
    check(where, vars[v]?.type === "query" && vars[v]?.datasource?.uid === "${datasource}",
          `no ${v} query variable on \${datasource}`);
  }
  const panels = [];
  const walk = (list) => list.forEach((p) => { panels.push(p); walk(p.panels ?? []); });
  walk(dashboard.panels ?? []);
  const ids = panels.map((p) => p.id);
  check(where, new Set(ids).size === ids.length, "panel ids are not unique");
  // Grid: 24 columns, no overlaps.
  const cells = new Map();
  for (const p of panels) {
    const g = p.gridPos;
    if (!check(where, g && g.x >= 0 && g.x + g.w <= 24 && g.h > 0, `panel ${p.id} "${p.title}" is off the grid`)) continue;
    for (let y = g.y; y < g.y + g.h; y++) {
      for (let x = g.x; x < g.x + g.w; x++) {
        const k = `${x},${y}`;
        if (cells.has(k)) fail(where, `panels ${cells.get(k)} and ${p.id} overlap at ${k}`);
        cells.set(k, p.id);
      }
    }
  }
  const exprs = [];
  for (const p of panels.filter((p) => p.type !== "row")) {
    check(where, p.datasource?.uid === "${datasource}", `panel "${p.title}" is not on \${datasource}`);
    for (const t of p.targets ?? []) {
      check(where, t.datasource?.uid === "${datasource}", `panel "${p.title}" query ${t.refId} is not on \${datasource}`);
      exprs.push({ title: p.title, expr: t.expr, legend: t.legendFormat });
      for (const m of t.expr.matchAll(/\b(m40llm_\w+)(\{[^}]*\})?/g)) {
        const sel = m[2] ?? "";
        check(where, sel.includes('namespace=~"$namespace"') && sel.includes('pod=~"$pod"'),
              `panel "${p.title}": ${m[1]} is not filtered by $namespace and $pod`);
      }
    }
  }
  // The panels the issue asks for, by title and what they plot.
  const need = [
    ["Generated tokens/s", /m40llm_generated_tokens_total/],
    ["Generated tokens/s per pod", /by \(pod\)[^]*m40llm_generated_tokens_total/],
    ["Requests/s by status", /by \(status\)[^]*m40llm_requests_total/],
    ["Time to first token", /m40llm_time_to_first_token_seconds_bucket/, ["p50", "p95", "p99"]],
    ["Inter-token latency", /m40llm_inter_token_latency_seconds_bucket/, ["p50", "p99"]],
    ["Queue depth", /m40llm_queue_depth/],
    ["Active sequences", /m40llm_active_sequences/],
    ["KV cache usage", /m40llm_kv_cache_usage_ratio/],
    ["Decode batch size", /m40llm_decode_batch_size/],
    ["GPU memory", /m40llm_device_memory_bytes/],
    ["Backend allocations", /m40llm_memory_bytes/],
  ];
  for (const [title, re, legends] of need) {
    const ps = panels.filter((p) => p.title === title && p.type === "timeseries");
    if (!check(where, ps.length === 1, `no timeseries panel "${title}"`)) continue;
    check(where, ps[0].targets.some((t) => re.test(t.expr)), `panel "${title}" does not plot ${re}`);
    for (const l of legends ?? []) {
      check(where, ps[0].targets.some((t) => t.legendFormat === l), `panel "${title}" has no ${l} series`);
    }
  }
  // PromQL syntax: the queries as recording rules for promtool check rules,
  // with the template variables replaced by values.
  const recording = {
    groups: [{
      name: "dashboard-queries",
      rules: exprs.map((e, i) => ({
        record: `dashboard:query_${i}`,
        expr: e.expr.replaceAll("$__rate_interval", "1m").replaceAll("$namespace", ".*").replaceAll("$pod", ".*"),
      })),
    }],
  };
  fs.writeFileSync(path.join(out, "dashboard-queries.rules.yml"), YAML.stringify(recording));
  if (failures.length === before) ok(`${where}: ${panels.length} panels, ${exprs.length} queries, variables and layout`);
  // The variables' label_values() queries name metrics too.
  const varQueries = Object.values(vars).map((v) => v.query?.query ?? "").filter(Boolean);
  return [...exprs.map((e) => e.expr), ...varQueries];
}
const dashboardExprs = checkDashboard();

// ---------------------------------------------------------------- metrics

// Every metric the dashboard and the rules query must be a series of a real
// server's /metrics, and the label values they select must exist on it.
async function checkMetrics() {
  const where = "metric names";
  if (!args["metrics-url"]) {
    fail(where, "no running m40llm serve to compare with");
    return;
  }
  const res = await fetch(args["metrics-url"]);
  const text = await res.text();
  const series = new Map(); // name -> Map(label -> Set(values))
  for (const line of text.split("\n")) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s/.exec(line);
    if (!m) continue;
    if (!series.has(m[1])) series.set(m[1], new Map());
    for (const l of (m[3] ?? "").matchAll(/([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"/g)) {
      const labels = series.get(m[1]);
      if (!labels.has(l[1])) labels.set(l[1], new Set());
      labels.get(l[1]).add(l[2]);
    }
  }
  fs.writeFileSync(path.join(out, "metrics.txt"), text);
  const ruleExprs = rules.groups.flatMap((g) => g.rules.map((r) => r.expr));
  const used = new Set();
  const targetLabels = new Set(["namespace", "pod", "job", "instance", "node", "le"]);
  for (const expr of [...dashboardExprs, ...ruleExprs]) {
    for (const m of expr.matchAll(/\b(m40llm_\w+)(?:\{([^}]*)\})?/g)) {
      const name = m[1];
      used.add(name);
      if (!check(where, series.has(name), `${name} is not in the server's /metrics`)) continue;
      for (const mm of (m[2] ?? "").matchAll(/(\w+)\s*(=~|!~|=|!=)\s*"([^"]*)"/g)) {
        const [, label, op, value] = mm;
        if (targetLabels.has(label)) continue;
        const have = series.get(name).get(label);
        if (!check(where, have, `${name} has no label ${label}`)) continue;
        const wanted = op.length === 2 ? value.split("|") : [value];
        for (const w of wanted) {
          if (/^[\w]+$/.test(w)) check(where, have.has(w), `${name}{${label}="${w}"} is not in /metrics (has ${[...have].join(", ")})`);
        }
      }
    }
  }
  if (!failures.some((f) => f.startsWith(where))) {
    ok(`${where}: ${used.size} metrics named by the dashboard and the rules are all served (${series.size} series names in /metrics)`);
  }
}
await checkMetrics();

// ---------------------------------------------------------------- values.yaml

// Every key of values.yaml down to the second level carries a comment
// directly above it, except the fields of Kubernetes structures passed
// through as they are (documented by Kubernetes); deeper keys may.
const passthrough = new Set(["resources", "nodeSelector", "podSecurityContext", "securityContext",
                             "strategy", "affinity"]);
function checkValuesDoc() {
  const file = path.join(chartDir, "values.yaml");
  const where = rel(file);
  const lines = readText(file).split("\n");
  let keys = 0;
  let top = "";
  lines.forEach((line, i) => {
    const m = /^( *)([A-Za-z0-9_.\-/"]+):(\s|$)/.exec(line);
    if (!m || m[1].length > 2) return;
    if (m[1].length === 0) top = m[2];
    else if (passthrough.has(top)) return;
    keys++;
    check(where, /^\s*#/.test(lines[i - 1] ?? ""), `line ${i + 1}: "${m[2]}" has no comment above it`);
  });
  if (!failures.some((f) => f.startsWith(where))) ok(`${where}: ${keys} keys documented`);
}
checkValuesDoc();

// ---------------------------------------------------------------- Prometheus config

// Debian's promtool is built without Kubernetes service discovery, so its
// check config rejects kubernetes_sd_configs. The copy written here swaps
// those for an empty static_configs (after checking them here) and keeps
// everything else for promtool.
function prepPrometheusConfig() {
  const src = path.join(root, "deploy", "prometheus", "prometheus.yml");
  const where = rel(src);
  const cfg = YAML.parse(readText(src));
  const roles = new Set(["node", "service", "pod", "endpoints", "endpointslice", "ingress"]);
  const known = new Set(["role", "namespaces", "selectors", "api_server", "kubeconfig_file", "attach_metadata",
                         "basic_auth", "authorization", "oauth2", "tls_config", "proxy_url", "follow_redirects"]);
  for (const sc of cfg.scrape_configs ?? []) {
    for (const sd of sc.kubernetes_sd_configs ?? []) {
      check(where, roles.has(sd.role), `${sc.job_name}: kubernetes_sd_configs role ${sd.role}`);
      for (const k of Object.keys(sd)) check(where, known.has(k), `${sc.job_name}: kubernetes_sd_configs.${k} is unknown`);
    }
    if (sc.kubernetes_sd_configs) {
      delete sc.kubernetes_sd_configs;
      sc.static_configs = [];
    }
  }
  check(where, (cfg.scrape_configs ?? []).some((sc) => sc.job_name === "m40llm"), "no job m40llm");
  const dir = path.join(out, "prometheus");
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, "prometheus.yml"), YAML.stringify(cfg));
  for (const f of cfg.rule_files ?? []) fs.copyFileSync(path.join(path.dirname(src), f), path.join(dir, f));
}
prepPrometheusConfig();

// ---------------------------------------------------------------- types

const typeErrors = typeCheck();
if (typeErrors === 0) {
  ok(`types: ${tsSources.size - 1} Kubernetes objects (kubernetes-models interfaces) and the dashboard (@grafana/schema) type-check`);
}

if (failures.length) {
  console.error(`\n${failures.length} problem(s):`);
  for (const f of failures) console.error(`FAIL ${f}`);
  process.exit(1);
}
