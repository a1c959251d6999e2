package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/client"
	"github.com/kiln-project/kiln/schema"
)

// OpenAI's error types.
const (
	typeInvalidRequest = "invalid_request_error"
	typeServer         = "server_error"
	typeRateLimit      = "rate_limit_error" // OpenAI's own 429s say what ran out ("requests", "tokens"); here the queue did
	typeTimeout        = "timeout_error"
)

// apiError is an answer in OpenAI's error shape:
// {"error":{"message","type","param","code"}}, with its HTTP status.
type apiError struct {
	Status  int    `json:"-"`
	Message string `json:"message"`
	Type    string `json:"type"`
	Param   any    `json:"param"` // the field, or null
	Code    any    `json:"code"`  // a string, or null
	// RetryAfter, when set, is the Retry-After header (seconds).
	RetryAfter int `json:"-"`
}

func (e *apiError) Error() string {
	if p, ok := e.Param.(string); ok {
		return fmt.Sprintf("%d %s on %s: %s", e.Status, e.Code, p, e.Message)
	}
	return fmt.Sprintf("%d %v: %s", e.Status, e.Code, e.Message)
}

// invalid is a 400 naming the field param (OpenAI's name for it).
func invalid(code schema.ErrorCode, param, format string, args ...any) *apiError {
	e := &apiError{Status: http.StatusBadRequest, Type: typeInvalidRequest, Code: string(code),
		Message: fmt.Sprintf(format, args...)}
	if param != "" {
		e.Param = param
	}
	return e
}

// unsupported is a 400 for a field kiln does not honour at that value.
func unsupported(param, format string, args ...any) *apiError {
	return invalid(schema.CodeUnsupported, param, format, args...)
}

// writeError writes e as the response.
func writeError(w http.ResponseWriter, e *apiError) {
	if e.RetryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(e.RetryAfter))
	}
	writeJSON(w, e.Status, map[string]*apiError{"error": e})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// openAIField maps a field kiln's coded errors name to the request field
// of the OpenAI API it came from.
func openAIField(kilnField string) string {
	switch kilnField {
	case "width", "height":
		return "size"
	case "init_image":
		return "image"
	}
	// A message's images came as image_url parts of its content.
	if m := messageImages.FindStringSubmatch(kilnField); m != nil {
		return m[1] + ".content"
	}
	return kilnField
}

var messageImages = regexp.MustCompile(`^(messages\[\d+\])\.images(\[\d+\])?$`)

// errDeadline is the cause of a request context whose X-Kiln-Deadline passed.
var errDeadline = errors.New("the job's deadline passed")

// errShutdown is the cause of the requests still running when the
// gateway's shutdown grace ran out.
var errShutdown = errors.New("the gateway is shutting down")

// jobError turns what the kiln client returned for a job waited for in
// ctx (jobContext) into an answer: past the job's deadline, whatever
// failed (the publish included) is a 504.
func (s *Server) jobError(ctx context.Context, jobID string, err error) *apiError {
	switch cause := context.Cause(ctx); {
	case errors.Is(cause, errDeadline):
		err = &client.CancelledError{JobID: jobID, Cause: errDeadline}
	case errors.Is(cause, errShutdown):
		return &apiError{Status: http.StatusServiceUnavailable, Type: typeServer, Code: "shutting_down",
			Message: fmt.Sprintf("the gateway stopped before job %s finished (the job is cancelled); retry", jobID)}
	}
	return s.kilnError(jobID, err)
}

// kilnError turns what the kiln client returned for a job into an answer.
func (s *Server) kilnError(jobID string, err error) *apiError {
	var je *client.JobError
	var ce *client.CancelledError
	switch {
	case errors.As(err, &je) && je.Result.Error != nil && je.Result.Error.Code == schema.CodeUnknownModel:
		return &apiError{Status: http.StatusNotFound, Type: typeInvalidRequest, Param: "model", Code: "model_not_found",
			Message: je.Result.Error.Message}
	case errors.As(err, &je) && je.Result.Error != nil && je.Result.Error.Code.Invalid():
		return invalid(je.Result.Error.Code, openAIField(je.Result.Error.Field), "%s", je.Result.Error.Message)
	case errors.Is(err, client.ErrQueueFull):
		secs := int(math.Ceil(s.cfg.RetryAfter.Seconds()))
		return &apiError{Status: http.StatusTooManyRequests, Type: typeRateLimit, Code: "queue_full", RetryAfter: secs,
			Message: fmt.Sprintf("kiln's queue is full: the job was not accepted; retry after %d s", secs)}
	case errors.Is(err, client.ErrNoWorker):
		return &apiError{Status: http.StatusServiceUnavailable, Type: typeServer, Param: "model", Code: string(schema.CodeNoWorker),
			Message: strings.TrimPrefix(err.Error(), "kiln: ")}
	case errors.Is(err, client.ErrExpired), errors.As(err, &ce) && errors.Is(ce.Cause, errDeadline):
		return &apiError{Status: http.StatusGatewayTimeout, Type: typeTimeout, Code: string(schema.CodeExpired),
			Message: fmt.Sprintf("job %s did not finish before its deadline", jobID)}
	case errors.Is(err, client.ErrCancelled):
		return &apiError{Status: http.StatusConflict, Type: typeInvalidRequest, Code: string(schema.CodeCancelled),
			Message: strings.TrimPrefix(err.Error(), "kiln: ")}
	case errors.Is(err, nats.ErrMaxPayload):
		return invalid(schema.CodeOverLimit, "", "the job is larger than the queue takes in one message (8 MiB by default): send fewer or smaller images")
	case errors.Is(err, client.ErrFailed):
		return &apiError{Status: http.StatusInternalServerError, Type: typeServer, Code: string(schema.CodeFailed),
			Message: strings.TrimPrefix(err.Error(), "kiln: ")}
	case errors.Is(err, context.Canceled):
		return &apiError{Status: 499, Type: typeInvalidRequest, Code: string(schema.CodeCancelled), Message: "the request was cancelled"}
	}
	s.log.Warn("job failed at the gateway", "job", jobID, "err", err)
	return &apiError{Status: http.StatusBadGateway, Type: typeServer, Code: "queue_unavailable",
		Message: "kiln's queue did not answer: " + strings.TrimPrefix(err.Error(), "kiln: ")}
}
