// The HeterMoEJob CRD's CEL rules (x-kubernetes-validations), evaluated with
// an npm CEL implementation, because the envtest apiserver (1.20) ignores
// them. Like the apiserver: defaults are applied first, integers are CEL
// ints, rules run at the node that declares them with `self` bound there,
// and transition rules (oldSelf) only on updates where both values exist.
// Good manifests (the examples, a full job) must pass; each bad manifest
// must fail with the expected message.
//
//   npm ci --prefix tests/operator/cel && node --test tests/operator/cel/
import {test} from 'node:test'
import assert from 'node:assert/strict'
import {readFileSync, readdirSync} from 'node:fs'
import {dirname, join} from 'node:path'
import {fileURLToPath} from 'node:url'
import {evaluate} from '@marcbachmann/cel-js'
import yaml from 'js-yaml'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..')
const crd = yaml.load(readFileSync(join(root, 'crds/hetermoe.io_hetermoejobs.yaml'), 'utf8'))
const schema = crd.spec.versions[0].schema.openAPIV3Schema

const clone = (v) => JSON.parse(JSON.stringify(v))

// Structural defaulting, as the apiserver does it (parents before children).
function applyDefaults (s, v) {
  if (v === undefined || v === null || typeof v !== 'object') return v
  if (Array.isArray(v)) return s.items ? v.map((x) => applyDefaults(s.items, x)) : v
  for (const [k, ps] of Object.entries(s.properties ?? {})) {
    if (v[k] === undefined && ps.default !== undefined) v[k] = clone(ps.default)
    if (v[k] !== undefined) v[k] = applyDefaults(ps, v[k])
  }
  return v
}

// JSON -> CEL values: schema integers become BigInt (CEL int).
function toCel (s, v) {
  if (v === null || v === undefined) return v
  if (s['x-kubernetes-int-or-string']) return typeof v === 'number' ? BigInt(v) : v
  if (s.type === 'integer') return BigInt(v)
  if (Array.isArray(v)) return v.map((x) => toCel(s.items ?? {}, x))
  if (typeof v === 'object') {
    const out = {}
    for (const [k, x] of Object.entries(v)) out[k] = toCel(s.properties?.[k] ?? {}, x)
    return out
  }
  return v
}

// Every failed rule's message for `obj` (and `old` on updates).
function violations (obj, old) {
  const messages = []
  const walk = (s, v, o, path) => {
    if (v === undefined || v === null) return
    for (const r of s['x-kubernetes-validations'] ?? []) {
      const transition = r.rule.includes('oldSelf')
      if (transition && (o === undefined || o === null)) continue
      const ctx = {self: toCel(s, v)}
      if (transition) ctx.oldSelf = toCel(s, o)
      let ok
      try {
        ok = evaluate(r.rule, ctx)
      } catch (e) {
        throw new Error(`${path}: rule ${JSON.stringify(r.rule)} does not evaluate: ${e.message}`)
      }
      if (ok !== true) messages.push(r.message)
    }
    if (s.properties && typeof v === 'object') {
      for (const [k, ps] of Object.entries(s.properties)) walk(ps, v[k], o?.[k], `${path}.${k}`)
    }
  }
  walk(schema.properties.spec, obj.spec, old?.spec, 'spec')
  return messages
}

const job = (edit = () => {}) => {
  const j = {
    apiVersion: 'hetermoe.io/v1alpha1',
    kind: 'HeterMoEJob',
    metadata: {name: 'tiny'},
    spec: {
      attention: {replicas: 2, template: {spec: {containers: [{name: 'trainer'}]}}},
      expert: {replicas: 'auto', gpuSelector: {families: ['volta'], minComputeCapability: '7.0', maxComputeCapability: '7.5'}},
      model: {config: '{}'},
      training: {data: '/d', steps: 100, globalBatch: 16, microBatches: 2, seqLen: 128, lr: 0.003, minLr: 0.0003, warmupSteps: 10},
      checkpoint: {claimName: 'ckpt', intervalSteps: 50},
      runPolicy: {schedulingPolicy: {scheduler: 'volcano', queue: 'q'}}
    }
  }
  edit(j.spec)
  return applyDefaults(schema, j)
}

test('every rule has a message and compiles', () => {
  const walk = (s) => {
    for (const r of s['x-kubernetes-validations'] ?? []) {
      assert.ok(r.message, `rule ${r.rule} has no message`)
    }
    for (const ps of Object.values(s.properties ?? {})) walk(ps)
    if (s.items) walk(s.items)
  }
  walk(schema)
  assert.deepEqual(violations(job()), [])
})

test('the examples pass every rule', () => {
  const files = readdirSync(join(root, 'examples')).filter((f) => /^hetermoejob-.*\.yaml$/.test(f))
  assert.ok(files.length >= 3)
  for (const f of files) {
    for (const doc of yaml.loadAll(readFileSync(join(root, 'examples', f), 'utf8'))) {
      if (doc?.kind !== 'HeterMoEJob') continue
      assert.deepEqual(violations(applyDefaults(schema, doc)), [], f)
    }
  }
})

const bad = [
  ['both model sources', (s) => { s.model.configMap = {name: 'm'} }, 'exactly one of model.config and model.configMap must be set'],
  ['no model source', (s) => { s.model = {} }, 'exactly one of model.config and model.configMap must be set'],
  ['replicas zero', (s) => { s.attention.replicas = 0 }, 'replicas must be 1..4096 or "auto"'],
  ['replicas word', (s) => { s.attention.replicas = 'many' }, 'replicas must be 1..4096 or "auto"'],
  ['auto on cpu', (s) => { s.expert.gpusPerReplica = 0; delete s.expert.gpuSelector }, 'replicas "auto" needs gpusPerReplica > 0'],
  ['selector on cpu', (s) => { s.attention.gpusPerReplica = 0; s.attention.gpuSelector = {families: ['ampere']} }, 'gpuSelector needs gpusPerReplica > 0'],
  ['capability range', (s) => { s.expert.gpuSelector.minComputeCapability = '8.0' }, 'minComputeCapability must not exceed maxComputeCapability'],
  ['micro-batches', (s) => { s.training.microBatches = 3 }, 'microBatches must divide globalBatch'],
  ['warm-up', (s) => { s.training.warmupSteps = 101 }, 'warmupSteps must not exceed steps'],
  ['min lr', (s) => { s.training.minLr = 0.01 }, 'minLr must not exceed lr'],
  ['nccl on cpu', (s) => { s.dispatch = {backend: 'nccl'}; s.attention.gpusPerReplica = 0; s.attention.replicas = 1 }, 'dispatch.backend nccl needs GPUs in both roles'],
  ['interval without claim', (s) => { delete s.checkpoint.claimName }, 'checkpoint.intervalSteps needs checkpoint.claimName'],
  ['queue without gang scheduler', (s) => { s.runPolicy.schedulingPolicy.scheduler = 'default' }, 'schedulingPolicy.queue needs scheduler volcano or kueue']
]
for (const [name, edit, message] of bad) {
  test(`rejects: ${name}`, () => {
    assert.ok(violations(job(edit)).includes(message), `wanted "${message}", got ${JSON.stringify(violations(job(edit)))}`)
  })
}

test('immutability on update', () => {
  const old = job()
  assert.deepEqual(violations(job(), old), [], 'an unchanged update passes')
  assert.deepEqual(violations(job((s) => { s.runPolicy.suspend = true }), old), [], 'suspend may change')
  assert.ok(violations(job((s) => { s.model.config = '{"x":1}' }), old).includes('model is immutable'))
  assert.ok(violations(job((s) => { s.training.steps = 200 }), old).includes('training is immutable'))
  const managed = job((s) => { s.runPolicy.managedBy = 'hetermoe.io/operator' })
  assert.ok(violations(job((s) => { s.runPolicy.managedBy = 'kueue.x-k8s.io/multikueue' }), managed).includes('runPolicy.managedBy is immutable'))
  assert.ok(violations(job(), managed).includes('runPolicy.managedBy is immutable'), 'cannot be removed')
  assert.ok(violations(managed, job()).includes('runPolicy.managedBy is immutable'), 'cannot be added')
})
