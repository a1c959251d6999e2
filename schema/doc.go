// Package schema owns kiln's wire contract: the job, event, result and
// heartbeat types that travel over NATS, the subjects they travel on, the one
// codec (msgpack by default, JSON when the Content-Type header says so) and
// the validation of jobs with one error code per kind of violation.
//
// It is a leaf: it imports no NATS code, so controllers written in any
// language can follow it from docs/DESIGN.md alone, and every other kiln
// package can import it without cycles.
//
// # Identity
//
// A job's kind ("chat.v1", "image.v1") is its identity on the wire, not its Go
// type name. Field names are snake_case in both msgpack and JSON.
//
// # Errors
//
// Every way a job can be refused has its own [ErrorCode]. Codes for which
// [ErrorCode.Invalid] is true are the caller's fault: such a job is never
// retried. A [*Error] names the field and the limit that was broken.
package schema
