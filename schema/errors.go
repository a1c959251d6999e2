package schema

import "fmt"

// ErrorCode says why a job failed. Codes are stable strings on the wire.
type ErrorCode string

// Codes for a job the caller got wrong. They are final: the job is
// terminated, never retried. Each kind of violation has its own code.
const (
	CodeBadMsgpack     ErrorCode = "bad_msgpack"      // body is not decodable msgpack
	CodeBadJSON        ErrorCode = "bad_json"         // body is not decodable JSON
	CodeBadContentType ErrorCode = "bad_content_type" // unknown Content-Type header
	CodeBadSubject     ErrorCode = "bad_subject"      // published on a subject that is not a job subject
	CodeUnknownField   ErrorCode = "unknown_field"    // the body has a field the job type does not have
	CodeMissingField   ErrorCode = "missing_field"    // a required field is empty
	CodeOverLimit      ErrorCode = "over_limit"       // a field is larger than its limit
	CodeOutOfRange     ErrorCode = "out_of_range"     // a number outside its allowed range
	CodeBadValue       ErrorCode = "bad_value"        // a value that is not one of the allowed forms
	CodeModelMismatch  ErrorCode = "model_mismatch"   // the model field disagrees with the subject
	CodeUnknownModel   ErrorCode = "unknown_model"    // no handler for this model on this worker
	CodeUnsupported    ErrorCode = "unsupported"      // valid, but this model cannot do it
)

// Codes for jobs that did not complete for other reasons.
const (
	CodeFailed    ErrorCode = "failed"    // the job failed on every allowed delivery
	CodeInternal  ErrorCode = "internal"  // a bug in kiln: the message says what
	CodeCancelled ErrorCode = "cancelled" // a cancel request stopped it
	CodeExpired   ErrorCode = "expired"   // its deadline passed, or it waited in the queue past the max age
	CodeNoWorker  ErrorCode = "no_worker" // queued for a model no live worker serves, past the grace
)

// Invalid reports whether the code means the request itself is wrong: the
// client maps these to ErrInvalid and the worker never retries them. (The
// class as a whole is what docs call invalid_request.)
func (c ErrorCode) Invalid() bool {
	switch c {
	case CodeBadMsgpack, CodeBadJSON, CodeBadContentType, CodeBadSubject, CodeUnknownField, CodeMissingField,
		CodeOverLimit, CodeOutOfRange, CodeBadValue, CodeModelMismatch, CodeUnknownModel, CodeUnsupported:
		return true
	}
	return false
}

// Error is a job error on the wire: a code, the field it concerns (empty
// when it concerns the whole message) and a sentence for people that says
// what was wrong and what is allowed.
type Error struct {
	Code    ErrorCode `msgpack:"code" json:"code"`
	Field   string    `msgpack:"field,omitempty" json:"field,omitempty"`
	Message string    `msgpack:"message" json:"message"`
}

func (e *Error) Error() string {
	if e.Field != "" {
		return fmt.Sprintf("%s: %s: %s", e.Code, e.Field, e.Message)
	}
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Errorf returns an *Error with a formatted message.
func Errorf(code ErrorCode, field, format string, args ...any) *Error {
	return &Error{Code: code, Field: field, Message: fmt.Sprintf(format, args...)}
}
