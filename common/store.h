/* Berth's Redis data model: key names and the Lua scripts that change bindings atomically. This
 * is the contract between gateways and schedulers; DESIGN.md section 3 and common/README.md
 * describe it. Every script takes the key prefix as ARGV[1] and builds its key names from it
 * (Berth targets one Redis primary with Sentinel, not Redis Cluster).
 *
 * Keys (P = prefix, h = 32-hex session hash, id = instance id):
 *   P s:{h}            hash  tenant source key template instance addr host state(bound|lost)
 *                            gen created ttl idle_timeout last_active meta   (times in ms)
 *                            paused (since, while its sandbox is frozen) paused_ms (total)
 *                            egress (the session's own egress lists, common/egress.h JSON)
 *   P i:{id}           hash  host addr template state(starting|warm|bound|releasing) session
 *                            started bound pid paused
 *   P pool:{host}:{t}  list  warm instance ids
 *   P static:{t}       zset  static instance id -> sessions bound to it
 *   P hosts            zset  host -> last heartbeat (ms); P host:{host} hash: api free capacity
 *   P expiry           zset  h -> deadline ms = min(created+ttl, last_active+idle_timeout)
 *   P sessions:{tenant} zset h -> created ms (listing; its size is what max_sessions limits)
 *   P limited:{tenant}:{limit} string (1 s): a tenant_limit event was written
 *   P rate:{tenant}:sessions hash tokens ms: the new-session bucket (Redis's clock)
 *   P execs:{tenant}   zset  running commands: exec id -> lease end ms (EXECS)
 *   P use:{tenant}     hash  mem mcpu: templates' memory/cpus of its sessions with a sandbox
 *                            (counted while it has max_memory/max_cpus; s:{h} use_mem use_mcpu)
 *   P events           stream (capped) type=created|bound|activity|expiring|expired|deleted|lost|
 *                      unused|paused|resumed|updated|exec_started|exec_ended|
 *                      file_written|file_deleted|tenant_limit|host_down|egress_updated|
 *                      egress_allowed|egress_refused; key_id on those an API call
 *                      caused
 *   P u:{tenant}:{hour} hash  usage counters "<h>|<template>|<metric>" (USAGE); ...:ids h -> id
 *   P u:{tenant}       zset  the hours that have usage (score = hour ms)
 *   P events:{tenant}  stream: the same entries (ids of its own) of that tenant's sessions, which
 *                      GET /v1/events reads; trimmed by age and length by the gateways
 *   P inval            channel: h whose binding changed (gateways drop cached entries)
 *   P cmd:{host}       channel: "bind {id} {h}" | "destroy {id}" for the host's scheduler
 *   P host:{host}:mark string: a token the host's scheduler wrote; missing = Redis lost it
 *   P epoch            string: ms from which a session Redis does not know counts as ended
 *                      (written NX by schedulers once their records are back; missing, or
 *                      ahead of now: "unknown", see TOUCH and CLAIM mode lookup)
 */
#ifndef CM_STORE_H
#define CM_STORE_H

enum cm_script {
    /* CLAIM  ARGV: P h tenant source key template now_ms ttl_ms idle_ms host_stale_ms
     *              on_lost(replace|fail) mode(claim|lookup) meta static_limit [key_id
     *              [max_sessions [sessions_per_second sessions_burst [max_memory
     *              max_cpu_millis template_memory template_cpu_millis]]]]
     * (key: the session key; key_id: the id of the API key whose control API call asks, written
     * into the created and bound events it causes, "" or absent for the data plane;
     * max_sessions: the tenant's limits.max_sessions, ""/"0"/absent: none; a new session
     * takes a token from the tenant's bucket P rate:{tenant}:sessions when a rate is given)
     * static_limit: "" for sandbox templates; for driver static the sessions an instance may
     * serve ("0" = unlimited): the least-loaded member of P static:{t} is bound instead of a
     * pool instance.
     * Returns {status, instance, addr, gen, extra}; status:
     *   "bound"  existing binding (extra = "")
     *   "new"    a warm instance was popped and bound now (extra = host)
     *   "empty"  no warm instance; extra = api address of the live host with most free room
     *            ("" when no host is alive)
     *   "lost"   the session's instance died and the template's policy is fail, or mode
     *            lookup (which never binds: a preview link or a background cache check must
     *            not start a replacement; the session's next claim does)
     *   "limit"  a new session, and the tenant has max_sessions already, or its bucket is
     *            empty, or the template's memory or cpus would take its P use:{tenant} over
     *            max_memory / max_cpu_millis (instance = the limit's name "max_sessions",
     *            "sessions_per_second", "max_memory" or "max_cpus"); a tenant_limit event
     *   "absent" mode lookup and no such session
     *   "unknown" mode lookup, no such session, and P epoch is missing or ahead of now (Redis
     *            lost its data a moment ago and the schedulers have not written all of it
     *            back): the caller keeps what it had cached; sandbox templates only */
    CM_SCRIPT_CLAIM,
    /* BIND  ARGV: P h tenant source key template now_ms ttl_ms idle_ms id addr host meta
     *             [key_id [max_sessions [max_memory max_cpu_millis template_memory
     *             template_cpu_millis]]]
     * Binds the given (just started, warm) instance unless h is bound already. key_id and
     * max_sessions: as for CLAIM (the scheduler has them from POST /v1/start).
     * Returns {"new", id, addr, gen}, or {"bound", instance, addr, gen}, {"limit",
     * "max_sessions", "", "0"} (a new session over the tenant's limit) or {"absent", ...}
     * (another tenant's session): then the script has put the instance back into its pool as
     * warm. */
    CM_SCRIPT_BIND,
    /* TOUCH  ARGV: P now_ms h [h ...]
     * Records activity (last_active) of each bound session; returns an array with the
     * binding's gen for each bound session, 0 for one not bound (gateways revalidate their
     * cached bindings with it), -1 for one Redis does not know while P epoch is missing or
     * ahead of now (not known yet: gateways keep the binding). The expiry zset is not moved: its score is a lower bound of
     * the deadline, which RELEASE with reason expired recomputes. */
    CM_SCRIPT_TOUCH,
    /* UPDATE ARGV: P h tenant ttl_ms|"" idle_ms|"" now_ms [key_id [egress]]
     * (key_id: the API key's id, written into its `updated` event; egress: "" unchanged,
     * "null" the session's own egress lists go, else their JSON (common/egress.h) into
     * P s:{h} egress; either way `egress <instance> <h>` to a bound session's host, which
     * applies it at once, and an `egress_updated` event)
     * Returns {"ok", deadline} or {"absent"} (also for another tenant's session). */
    CM_SCRIPT_UPDATE,
    /* RELEASE ARGV: P h tenant|"" reason(deleted|expired|unused) now_ms [key_id]
     * (key_id: the API key's id, written into its event)
     * (unused: the gateway made it for a keyless request whose answer did not start it)
     * Deletes the session and asks its host to destroy the instance. With reason expired it
     * first re-checks the deadline and returns {"alive", deadline} if it moved.
     * Returns {"released", instance, host} or {"absent"} (also for another tenant's). */
    CM_SCRIPT_RELEASE,
    /* LOST  ARGV: P id now_ms reason
     * The instance is gone: drop it from its pool, mark its session lost (the session stays
     * for its TTL, so the next request follows on_lost). Returns the session h or "". */
    CM_SCRIPT_LOST,
    /* RESOLVE ARGV: P ah tenant
     * Follows alias ah (MCP session id, legacy SSE session id) to its session. Returns
     * {"bound", instance, addr, gen, h} or {"absent"} (unknown alias, another tenant's, or a
     * session that is no longer bound: its client must start over). */
    CM_SCRIPT_RESOLVE,
    /* ALIAS ARGV: P ah h
     * Records alias ah -> h (with the session: deleted with it). Returns 1, or 0 when the
     * session is gone. */
    CM_SCRIPT_ALIAS,
    /* STATIC ARGV: P template now_ms id addr [id addr ...]
     * Registers a static template's instances (P i:{id} state=static driver=static, P static:{t} zset
     * id -> bound sessions); members no longer listed are dropped from the zset. Returns the
     * member count. */
    CM_SCRIPT_STATIC,
    /* RECONCILE ARGV: P host id template addr state(starting|warm|bound|releasing) h started
     *                 pid now_ms ttl_ms driver
     * A scheduler writes one live instance back after Redis lost its data (scheduler/
     * reconcile.c): SADD P host:{host}:instances, the P i:{id} fields (driver too); then by
     * state:
     *   warm: back into P pool:{host}:{t} (LREM + RPUSH: idempotent) -> {"warm"}, unless a
     *         claim bound it meanwhile -> {"claimed", h}
     *   starting, releasing: the state if the record had none -> {state}
     *   bound: P s:{h} still bound to it -> {"bound"}; being released -> {"released"};
     *          bound elsewhere or lost -> {"taken"}; no record at all -> {"vanished"}: the
     *          record comes back as state=lost (template, instance, gen = now_ms, so newer than
     *          any gen a gateway cached) expiring after ttl_ms, with a `lost` event and an
     *          `inval`, so the session's next request follows its on_lost policy.
     * The caller ends the instance for every answer but warm/starting/releasing/bound/claimed. */
    CM_SCRIPT_RECONCILE,
    /* IDLE ARGV: P now_ms h id pause_ms [h id pause_ms ...]
     * For each triple 1 when P s:{h} is bound to instance id, not paused, and its last_active
     * is at least pause_ms before now_ms; else 0 (an array in the same order). Read-only. */
    CM_SCRIPT_IDLE,
    /* PAUSED ARGV: P h id now_ms reason [key_id] (and RESUMED: the API key that asked)
     * The scheduler froze instance id: P s:{h} paused = now_ms (and P i:{id} paused), a
     * `paused` event. Returns 1, or 0 when the session is no longer bound to id (nothing
     * written: the caller thaws it again). */
    CM_SCRIPT_PAUSED,
    /* RESUMED ARGV: P h id now_ms reason
     * Instance id was thawed: the time since `paused` is added to P s:{h} paused_ms, `paused`
     * removed, last_active = now_ms (a resume is activity), a `resumed` event with paused_ms.
     * Returns that time (ms), or -1 when the session was not recorded as paused by id. */
    CM_SCRIPT_RESUMED,
    /* EVENT ARGV: P now_ms tenant type [field value ...]
     * An event written by the gateway itself (exec started and ended): into P events and
     * P events:{tenant}, as every script's events. Returns 1. */
    CM_SCRIPT_EVENT,
    /* USAGE ARGV: P now_ms retention_ms { h n metric value [metric value ...] }...
     * Adds each session's <n> metric deltas to P u:{tenant}:{hour} (the session's tenant and
     * template from P s:{h}; a session Redis no longer knows is skipped) as
     * "<h>|<template>|<metric>" (HINCRBY; mem_peak keeps the largest), notes the session id
     * in P u:{tenant}:{hour}:ids and the hour in the zset P u:{tenant}; all expire after
     * retention_ms. Metrics: requests bytes_in bytes_out active_ms (gateways), wall_ms
     * paused_ms cpu_ms mem_peak mem_kib_ms (schedulers).
     * Returns an array of two entries per session, in the order of ARGV: the tenant and the
     * template it was counted under (template "" when the record has none), or two nils for
     * a session Redis does not know (not counted), so that the caller can add the deltas it
     * sent to counters of its own by tenant and template (common/usagetab.h). */
    CM_SCRIPT_USAGE,
    /* EXECS ARGV: P tenant now_ms lease_ms max id op(begin|renew|end) h
     * The tenant's running commands, as leases in the zset P execs:{tenant} (id -> lease end
     * ms: a gateway that dies holds its slots no longer than lease_ms). begin: drops expired
     * leases, then takes a slot unless max are held (then a tenant_limit event, at most one a
     * second, for session h); renew: extends id's lease; end: gives it back. Returns 1, or 0
     * for a begin over max. */
    CM_SCRIPT_EXECS,
    /* HOSTDOWN ARGV: P host now_ms down_after_ms
     * A scheduler host whose heartbeat (its score in P hosts) is older than down_after_ms:
     * re-checked here, then every instance in P host:{host}:instances goes as LOST does (reason
     * host_down: its session is marked lost, so its next request follows on_lost), the host's
     * pools, instance set, hash and marker are deleted and it leaves P hosts (a `host_down`
     * event). The marker's absence makes the host's scheduler, if it comes back, write its
     * live instances back (RECONCILE) and end those whose sessions moved on. Returns the
     * number of sessions marked lost, or -1 when the host is alive (or already gone). */
    CM_SCRIPT_HOSTDOWN,
    CM_SCRIPT_COUNT
};

/* The script's Lua source; static storage. */
const char *cm_store_script_source(enum cm_script s);
/* The script's SHA-1 as 40 hex digits (computed once, thread-safe); static storage. */
const char *cm_store_script_sha(enum cm_script s);
const char *cm_store_script_name(enum cm_script s);

#endif
