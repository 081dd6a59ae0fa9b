// Type-checked (never run) by test/types.test.js: the public API as a TypeScript app uses it.
import Database from 'better-sqlite3'
import {
  openReplicated,
  type ChangeEvent,
  type Config,
  type Conflict,
  type ConflictSide,
  type ErrorCode,
  type HarmonyLiteError,
  type Replica,
  type Status,
} from '../..'

async function app(): Promise<void> {
  const db = new Database('app.db')
  const cfg: Config = { nodeId: 1, replicationLog: { shards: 2, maxAge: '24h' }, nats: { urls: ['nats://127.0.0.1:4222'] } }
  await using replica = await openReplicated(db, cfg)
  const fromPath: Replica = await openReplicated('other.db', 'harmonylite.toml')
  const withDefaults: Replica = await openReplicated('third.db')

  const id: bigint = replica.nodeId
  const token: string = await replica.sync(5_000)
  await fromPath.waitFor([token, withDefaults.applied()], 10_000)
  await replica.waitReady()

  const status: Status = await replica.status()
  const applied: bigint = status.shards[0].appliedSeq
  const connected: boolean = status.connection === 'connected'
  const lag: number | null = status.shards[0].lagMessages
  const last: bigint | null = status.shards[0].streamLastSeq
  const conflictCount: number = status.conflicts + status.conflictsRecorded + status.movedKeys
  const stale: boolean = status.behindRetention
  const phase: string = status.snapshot.phase
  const waitsFor: 'schema' | 'constraint' | 'invalid' | 'clock' | 'queued' = status.pausedTables[0].kind
  const lastError: string | null = status.lastError
  const divergentWith: bigint | undefined = status.divergentTables[0]?.peerNodeId
  const divergenceRepaired: number | null | undefined = status.divergentTables[0]?.republishedAtMs
  const compared: number = status.divergenceComparisons
  const metrics: string = await replica.metrics()

  const conflicts: Conflict[] = await replica.conflicts({ after: 0, limit: 100 })
  await replica.conflicts()
  await replica.conflicts({ after: conflicts[0].id })
  const first: Conflict = conflicts[0]
  const kind: 'change_lost' | 'values_overwritten' | 'deleted_with_edits' | 'key_moved' | 'constraint' | 'table_dropped' = first.kind
  const loser: ConflictSide | null = first.loser
  const lostValue: null | bigint | number | string | Buffer | undefined = loser?.values['rating']
  const lostBy: bigint | undefined = loser?.node
  const movedTo: Array<null | bigint | number | string | Buffer> | null = first.movedTo
  const columns: string[] = first.columns
  const conflictSubscription = replica.onConflict((conflict: Conflict) => {
    void [conflict.table, conflict.pk, conflict.winner?.hlc, conflict.detail, conflict.atMs]
  })
  replica.onConflict(async () => {})
  conflictSubscription.unsubscribe()
  // @ts-expect-error: not a conflict kind
  if (first.kind === 'lost') console.log('never')
  void [lag, last, conflictCount, stale, phase, waitsFor, lastError, divergentWith, divergenceRepaired, compared, metrics, kind, lostValue, lostBy, movedTo, columns]

  const subscription = replica.onChange((event: ChangeEvent) => {
    const key: null | bigint | number | string | Buffer = event.pk[0]
    const op: 'insert' | 'update' | 'delete' = event.op
    const hlc: bigint = event.hlc
    void [key, op, hlc]
  })
  replica.onChange(async () => {})
  subscription.unsubscribe()

  for await (const event of replica.changes()) {
    const from: bigint = event.originNode
    if (event.local) break
    void from
  }

  try {
    await replica.saveSnapshot()
  } catch (err) {
    const code: ErrorCode = (err as HarmonyLiteError).code
    if (code === 'CONFIG') console.log((err as HarmonyLiteError).field)
    // @ts-expect-error: not a code
    if (code === 'NOT_A_CODE') console.log('never')
  }

  // @ts-expect-error: unknown config keys are type errors too
  await openReplicated('x.db', { nats: { urlz: [] } })

  await fromPath.close()
  await withDefaults.cleanup()
  void [id, applied, connected]
}

void app
