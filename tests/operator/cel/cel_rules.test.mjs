// The HeterMoEJob CRD's CEL rules (x-kubernetes-validations), evaluated with
// an npm CEL implementation, because the envtest apiserver (1.20) ignores
// them. Like the apiserver: defaults are applied first, integers are CEL
// ints, rules run at the node that declares them with `self` bound there,
// and transition rules (oldSelf) only on updates where both values exist.
// Good manifests (the examples, a full job) must pass; each bad manifest
// must fail with the expected message. And, as an apiserver >= 1.25 does
// when the CRD itself is created, every `default` in the schema must pass
// the rules of its node and of the nodes beneath it AS DECLARED (nested
// defaults are not applied to it first), or the CRD does not install.
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

// What the apiserver does to each `default` when the CRD is created or
// updated (apiextensions-apiserver schema/defaulting/validation.go): the
// default value, as declared and with no nested defaulting, is validated by
// the CEL rules of the node declaring it and of every node beneath it that
// the value reaches, `self` bound at the node declaring the rule. The call
// is Validate(self = default, oldSelf = default), so transition rules run
// with oldSelf = the default itself; with CRDValidationRatcheting (beta and
// on since 1.30) a second call has no old object, and transition rules are
// skipped in it. Both passes run here. A rule that does not evaluate ("no
// such key: x") or is not true fails the CRD; each failure names the path
// (as the apiserver spells it) and the rule.
function defaultFailures (root) {
  const failures = []
  const check = (s, v, path, withOld) => {
    if (v === undefined || v === null) return
    for (const r of s['x-kubernetes-validations'] ?? []) {
      const transition = /\boldSelf\b/.test(r.rule)
      if (transition && !withOld) continue
      const ctx = {self: toCel(s, v)}
      if (transition) ctx.oldSelf = ctx.self
      const pass = withOld ? 'oldSelf = the default' : 'no old object'
      try {
        const ok = evaluate(r.rule, ctx)
        if (ok !== true) failures.push(`${path}: rule ${JSON.stringify(r.rule)} is ${ok} (${pass}): ${r.message}`)
      } catch (e) {
        failures.push(`${path}: ${e.message.split('\n')[0]} evaluating rule ${JSON.stringify(r.rule)} (${pass})`)
      }
    }
    if (Array.isArray(v)) {
      if (s.items) v.forEach((x, i) => check(s.items, x, `${path}[${i}]`, withOld))
    } else if (typeof v === 'object') {
      for (const [k, x] of Object.entries(v)) {
        const ps = s.properties?.[k] ?? (typeof s.additionalProperties === 'object' ? s.additionalProperties : undefined)
        if (ps) check(ps, x, `${path}.${k}`, withOld)
      }
    }
  }
  const walk = (s, path) => {
    if (s.default !== undefined) {
      for (const withOld of [true, false]) check(s, clone(s.default), `${path}.default`, withOld)
    }
    for (const [k, ps] of Object.entries(s.properties ?? {})) walk(ps, `${path}.properties[${k}]`)
    if (s.items) walk(s.items, `${path}.items`)
    // additionalProperties cannot hold defaults, as the apiserver says.
  }
  walk(root, 'spec.validation.openAPIV3Schema')
  return failures
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

test('every default passes every rule it reaches, as the apiserver checks at CRD creation', () => {
  const failures = defaultFailures(schema)
  assert.deepEqual(failures, [], `the apiserver (>= 1.25) refuses the CRD:\n  ${failures.join('\n  ')}`)
})

test('the default check catches a rule that reads an unset field, and runs transition rules as the apiserver does', () => {
  const probe = (rules, dflt = {}) => defaultFailures({
    type: 'object',
    properties: {
      box: {
        type: 'object',
        default: dflt,
        'x-kubernetes-validations': rules.map((rule) => ({rule, message: 'm'})),
        properties: {
          n: {type: 'integer', default: 0},
          inner: {type: 'object', 'x-kubernetes-validations': [{rule: 'self.k > 0', message: 'k'}], properties: {k: {type: 'integer', default: 1}}}
        }
      }
    }
  })
  const unset = probe(['self.n == 0'])
  assert.equal(unset.length, 2, JSON.stringify(unset))
  assert.match(unset[0], /^spec\.validation\.openAPIV3Schema\.properties\[box\]\.default: No such key: n evaluating rule "self\.n == 0"/)
  assert.deepEqual(probe(['!has(self.n) || self.n == 0']), [], 'a has() guard holds for the bare default')
  assert.deepEqual(probe(['self.n == 0'], {n: 0}), [], 'a default that spells the nested default out holds')
  assert.match(probe(['self.n == 1'], {n: 0})[0], /is false/, 'a false rule fails too')
  assert.match(probe([], {inner: {}})[0], /properties\[box\]\.default\.inner: No such key: k evaluating rule "self\.k > 0"/,
    'rules beneath the default run with self bound at their own node, on the value as declared')
  assert.deepEqual(probe(['self == oldSelf', 'has(self.n) == has(oldSelf.n)']), [], 'transition rules see oldSelf = the default')
  const transition = probe(['oldSelf.n == 0'])
  assert.equal(transition.length, 1, 'a transition rule runs only in the pass that has an old object')
  assert.match(transition[0], /No such key: n evaluating rule "oldSelf\.n == 0" \(oldSelf = the default\)/)
})

// Paths in `v` that the schema does not declare (the apiserver prunes them).
function undeclared (s, v, path) {
  if (s['x-kubernetes-preserve-unknown-fields'] || v === null || typeof v !== 'object') return []
  if (Array.isArray(v)) return s.items ? v.flatMap((x, i) => undeclared(s.items, x, `${path}[${i}]`)) : []
  return Object.entries(v).flatMap(([k, x]) => {
    const ps = s.properties?.[k] ?? (typeof s.additionalProperties === 'object' ? s.additionalProperties : undefined)
    return ps ? undeclared(ps, x, `${path}.${k}`) : [`${path}.${k}`]
  })
}

// Every document of every example, e.g. a HeterMoEJob and the ConfigMap it
// reads, so that `kubectl apply -f examples/<file>` alone is enough.
const examples = () => readdirSync(join(root, 'examples'))
  .filter((f) => /^hetermoejob-.*\.yaml$/.test(f))
  .map((f) => [f, yaml.loadAll(readFileSync(join(root, 'examples', f), 'utf8')).filter((d) => d !== null && d !== undefined)])

test('every example document is a well-formed Kubernetes object', () => {
  const files = examples()
  assert.ok(files.length >= 3)
  const dns1123 = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/
  for (const [f, docs] of files) {
    assert.ok(docs.length >= 1, `${f}: no documents`)
    const seen = new Set()
    docs.forEach((d, i) => {
      const at = `${f} document ${i + 1}`
      assert.ok(d && typeof d === 'object' && !Array.isArray(d), `${at}: not a mapping`)
      assert.ok(typeof d.apiVersion === 'string' && /^([a-z0-9.-]+\/)?v[0-9]+((alpha|beta)[0-9]+)?$/.test(d.apiVersion), `${at}: apiVersion ${d.apiVersion}`)
      assert.ok(typeof d.kind === 'string' && /^[A-Z][A-Za-z0-9]*$/.test(d.kind), `${at}: kind ${d.kind}`)
      assert.ok(d.metadata && typeof d.metadata === 'object', `${at}: no metadata`)
      assert.ok(typeof d.metadata.name === 'string' && d.metadata.name.length <= 253 && dns1123.test(d.metadata.name), `${at}: metadata.name ${d.metadata.name}`)
      const key = `${d.kind}/${d.metadata.name}`
      assert.ok(!seen.has(key), `${at}: ${key} twice`)
      seen.add(key)
      if (d.kind === 'ConfigMap') {
        assert.equal(d.apiVersion, 'v1', at)
        for (const [k, v] of Object.entries(d.data ?? {})) {
          assert.ok(/^[-._a-zA-Z0-9]+$/.test(k), `${at}: data key ${k}`)
          assert.equal(typeof v, 'string', `${at}: data.${k} is not a string`)
        }
      }
    })
  }
})

test('the examples pass every rule and carry the ConfigMaps they read', () => {
  let jobs = 0
  for (const [f, docs] of examples()) {
    for (const doc of docs) {
      if (doc.kind !== 'HeterMoEJob') continue
      ++jobs
      assert.equal(doc.apiVersion, `${crd.spec.group}/${crd.spec.versions[0].name}`, f)
      // (metadata is ObjectMeta, which the apiserver keeps whatever the schema says)
      assert.deepEqual(undeclared(schema, {...doc, metadata: {}}, 'HeterMoEJob'), [], `${f}: fields the apiserver would prune`)
      assert.deepEqual(violations(applyDefaults(schema, clone(doc))), [], f)
      const ref = doc.spec.model.configMap
      if (!ref) continue
      const cm = docs.find((d) => d.kind === 'ConfigMap' && d.metadata.name === ref.name)
      assert.ok(cm, `${f}: model.configMap ${ref.name} is not in the file`)
      assert.ok(!cm.metadata.namespace || cm.metadata.namespace === doc.metadata.namespace, `${f}: ConfigMap ${ref.name} is in another namespace`)
      const text = cm.data?.[ref.key ?? 'config.json']
      assert.equal(typeof text, 'string', `${f}: ConfigMap ${ref.name} has no key ${ref.key ?? 'config.json'}`)
      const config = JSON.parse(text)
      assert.equal(config.model_type, 'mixtral', f)
      assert.ok(config.max_position_embeddings >= doc.spec.training.seqLen, `${f}: seqLen exceeds max_position_embeddings`)
    }
  }
  assert.ok(jobs >= 3, `only ${jobs} HeterMoEJobs in the examples`)
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
  ['evaluation without data', (s) => { s.training.evalEvery = 50 }, 'evalEvery needs validData'],
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
