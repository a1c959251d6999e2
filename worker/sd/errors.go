package sd

import "errors"

// Kinds of request errors; a *RequestError matches one of them.
var (
	// ErrOutOfRange: steps, strength, width, height or the init image's
	// side ratio is outside what the package supports.
	ErrOutOfRange = errors.New("sd: out of range")
	// ErrOverLimit: the init image has too many pixels.
	ErrOverLimit = errors.New("sd: over limit")
	// ErrBadImage: the init image cannot be decoded.
	ErrBadImage = errors.New("sd: bad init image")
	// ErrUnsupported: the package cannot do this (img2img without a VAE
	// encoder).
	ErrUnsupported = errors.New("sd: unsupported")
	// ErrPackage is matched by every error about a package Open refuses:
	// a tensor that is neither where the vendor's name nor where its shape
	// says (the error lists the tensors found), or shapes that do not fit
	// together.
	ErrPackage = errors.New("sd: bad model package")
	// ErrClosed is returned by Generate after Close.
	ErrClosed = errors.New("sd: pipeline closed")
)

// RequestError is a request the pipeline refuses before any device work:
// Field names the request field ("steps", "strength", "init_image", "width",
// "height"), Msg says what was wrong and what is allowed, Err is one of the
// kinds above.
type RequestError struct {
	Field string
	Msg   string
	Err   error
}

func (e *RequestError) Error() string { return "sd: " + e.Field + ": " + e.Msg }

// Unwrap returns the kind.
func (e *RequestError) Unwrap() error { return e.Err }
