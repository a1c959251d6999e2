package schema

// The NATS headers kiln reads and writes. A job carries its id in NATS's own
// Nats-Msg-Id header (the stream deduplicates on it); these are kiln's.
const (
	// HeaderContentType names a message's codec (ContentMsgpack, the
	// default, or ContentJSON). Replies use the codec of the job they answer.
	HeaderContentType = "Content-Type"
	// HeaderReplyTo carries a job's reply subject as well as its body's
	// reply_to, so that even a job whose body cannot be decoded gets its
	// error back.
	HeaderReplyTo = "Kiln-Reply-To"
	// HeaderClient names the client that submitted a job: the worker stores
	// the result under Subjects.ClientResult(job, client). A value that is
	// not a subject token is ignored.
	HeaderClient = "Kiln-Client"
)
