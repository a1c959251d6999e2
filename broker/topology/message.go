package topology

import (
	"fmt"

	"github.com/nats-io/nats.go"

	"github.com/kiln-project/kiln/schema"
)

// NewMsg encodes v with codec as a kiln message on subject: the body and
// the Content-Type header that names the codec. Callers add any other kiln
// header (schema.HeaderReplyTo) and publish it, with
// core NATS or into a stream.
//
// It lives here, not in schema, because schema imports no NATS code; the
// worker and the client both import topology already.
func NewMsg(subject string, codec schema.Codec, v any) (*nats.Msg, error) {
	data, err := codec.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("topology: encode %T for %s: %w", v, subject, err)
	}
	m := nats.NewMsg(subject)
	m.Data = data
	m.Header.Set(schema.HeaderContentType, codec.ContentType())
	return m, nil
}

// Publish encodes v with codec and publishes it on subject with core NATS
// (no stream acknowledgement): a job's events on its reply subject, fleet
// events (which KILN_EVENTS captures all the same).
func Publish(nc *nats.Conn, subject string, codec schema.Codec, v any) error {
	m, err := NewMsg(subject, codec, v)
	if err != nil {
		return err
	}
	if err := nc.PublishMsg(m); err != nil {
		return fmt.Errorf("topology: publish %s: %w", subject, err)
	}
	return nil
}
