// Package thermal owns kiln's thermal governor: reading temperatures (the
// card's Tj and the host SoC's thermal zone) and the state machine that
// decides whether a worker may take work (ok), must finish its running job
// and take no more (hot), or must stop the running job at once (critical).
//
// It knows nothing of NATS or jobs: Governor is a pure state machine fed
// with readings, Monitor samples the sources on an interval and reports
// transitions to a callback. The worker package acts on them.
package thermal
