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
)

// A job's client is not a header: it is the client token of the job's
// subject (Subjects.ClientJob), the one thing about a sender that broker
// permissions enforce. (Kiln-Client, which named it before, is ignored.)
