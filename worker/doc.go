// Package worker is kiln's queue runtime: the process side of one card. A
// Worker takes jobs for the models its handlers serve from the shared
// JetStream queue, as many at once as the card has free slots, runs them,
// streams their events and answers each with exactly one result.
//
// It knows NATS, the topology (broker/topology) and the wire contract
// (schema), and nothing of what runs a job: it imports no engine. The
// handlers that run models on a card (chat over worker/llm, image over
// worker/sd) and the card supervisor that loads, resets and classifies the
// card's faults live in worker/card; the tests run test/echo's handlers.
//
// # Handlers
//
// A Handler[T] runs jobs of one kind (schema.ChatJob or schema.ImageJob)
// for one model; Config maps model names to them. Handle gets the decoded,
// validated job and streams through Job.Token and Job.Progress. Its error
// decides what follows (see Handler): a *schema.Error is the request's
// fault, Permanent ends the job, anything else is retried.
//
// # The fetch loop
//
// One goroutine fetches one job at a time, high lane before normal, while
// the card has a free slot: a model runs at most its handler's Capacity of
// jobs at once (one without it), and the worker at most Config.MaxJobs in
// all. Each admitted job runs on a goroutine of its own; a full card
// fetches nothing, so the queue's jobs go to other cards, and a slot that
// frees makes the loop look at every route again, high lanes first. An idle
// worker sleeps until the jobs stream announces a stored job on the route's
// wake subject, or Config.PollInterval passes. Before each fetch it asks
// the health gate: the thermal governor (Config.Thermal), a card reset in
// progress, an unhealthy or lost card. A fetch that fails (a permission
// error, say) is logged at Warn, at most once per route every 30 s.
//
// # A job's steps
//
// Each delivery goes through decode (the body read strictly, within shape
// bounds, and checked with its subject against the limits; a body that
// cannot be read still yields the id and reply subject it can, so its
// refusal is answered), admit (a stored result re-sent, a job cancelled
// or expired while queued ended), execute (the started event, InProgress every third
// of the ack wait, the deadline, a recovered panic) and settle. What
// settle does is decided by classify, a pure function: the result stored
// once in KILN_RESULTS and sent on the reply subject, then Ack, or Term for
// an error; a retry with back-off (Config.RetryDelays) until the
// consumer's last delivery; or a hand-back to the queue when the worker
// stops or its card is critical. The consumer's AckWait and MaxDeliver
// hold, not the worker's Config: the worker reads them from the consumer
// it binds to.
//
// # Whose job it is
//
// A job's client is the last token of its subject,
// <prefix>.jobs.<kind>.<model>.<lane>.<client>, which broker permissions
// pin to each controller's own id; a job on the 3-token subject is
// anonymous (an open broker, or an admin). The worker trusts nothing else
// about the sender, no header and no body field, and keeps each client's
// jobs apart by that token: its events and result go only to a reply
// subject that schema.Subjects.ReplyTo allows (the client's own
// <prefix>.reply.<client>.… or _INBOX.<client>.…; for an anonymous job,
// anything outside kiln's and NATS's own subjects), else the job is
// refused with bad_value on reply_to; its result is stored under
// <prefix>.results.<job>.<client> and looked up there only; a cancel stops
// it only when it names that client (schema.JobKey). So the worker, which
// may publish results, events and registry entries, never does so for a
// client into someone else's subjects.
//
// # Around the jobs
//
//   - Heartbeats on the events subject and in the kiln_workers registry
//     every HeartbeatInterval, and a NATS micro service (MicroName) whose
//     status endpoint answers with the same heartbeat.
//   - Cancels: the kiln_cancel bucket mirrored in memory, and the cancel
//     subjects, which stop the running job they name (and no other) at its
//     next token or step; both are keyed by schema.JobKey(client, id).
//   - Device faults (Config.Device): a transient error the card reports as
//     a fault hands every other running job back (ErrDeviceFault), then
//     resets the card with back-off once none runs;
//     MaxFaults in a row make the worker unhealthy and stop it
//     (ErrUnhealthy); a lost card stops it (ErrCardLost). Either way a
//     Device that is a Rebooter reboots its card first, so that the next
//     process finds it working. A Device that is a Loader loads its models after the
//     worker has registered; one that is a ModelChecker reports the models
//     whose packages failed to load: the worker fetches none of their jobs,
//     lists them failed in heartbeats and publishes load_failed for each.
//   - The reaper: every worker listens (as a queue group) for JetStream's
//     max-deliveries advisory, so a job whose every delivery died with its
//     worker still ends with one error result.
//
// # Lifecycle
//
// New checks the Config, Start binds the consumers and starts the loop,
// Stop drains (the running jobs finish, or are handed back when ctx ends),
// StopAndCancel hands every running job back at once, and Run does Start,
// waits for its context and stops within Config.ShutdownGrace.
package worker
