package schema

import (
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Limits bound what a job may ask for. They are checked before any work.
// The zero value of a field means its DefaultLimits value.
type Limits struct {
	MaxMessages      int // chat turns per job (default 256)
	MaxContentBytes  int // bytes of one message's content (default 64 KiB)
	MaxPromptBytes   int // bytes of all message contents together (default 256 KiB)
	MaxImages        int // images over all messages (default 4)
	MaxImageBytes    int // bytes of one image, chat or init image (default 8 MiB)
	MaxTokens        int // upper bound of max_tokens (default 32768; handlers check the model's context)
	MaxStop          int // stop strings (default 8)
	MaxStopBytes     int // bytes of one stop string (default 64)
	MaxPromptChars   int // characters of an image prompt (default 2000)
	MaxSteps         int // image steps (default 50; handlers check what their package supports)
	MaxMetadata      int // metadata entries (default 32)
	MaxMetadataBytes int // bytes of one metadata key or value (default 256)
}

// DefaultLimits are the limits used where a Limits field is zero.
var DefaultLimits = Limits{
	MaxMessages:      256,
	MaxContentBytes:  64 << 10,
	MaxPromptBytes:   256 << 10,
	MaxImages:        4,
	MaxImageBytes:    8 << 20,
	MaxTokens:        32768,
	MaxStop:          8,
	MaxStopBytes:     64,
	MaxPromptChars:   2000,
	MaxSteps:         50,
	MaxMetadata:      32,
	MaxMetadataBytes: 256,
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	pick := func(v, def int) int {
		if v > 0 {
			return v
		}
		return def
	}
	return Limits{
		MaxMessages:      pick(l.MaxMessages, d.MaxMessages),
		MaxContentBytes:  pick(l.MaxContentBytes, d.MaxContentBytes),
		MaxPromptBytes:   pick(l.MaxPromptBytes, d.MaxPromptBytes),
		MaxImages:        pick(l.MaxImages, d.MaxImages),
		MaxImageBytes:    pick(l.MaxImageBytes, d.MaxImageBytes),
		MaxTokens:        pick(l.MaxTokens, d.MaxTokens),
		MaxStop:          pick(l.MaxStop, d.MaxStop),
		MaxStopBytes:     pick(l.MaxStopBytes, d.MaxStopBytes),
		MaxPromptChars:   pick(l.MaxPromptChars, d.MaxPromptChars),
		MaxSteps:         pick(l.MaxSteps, d.MaxSteps),
		MaxMetadata:      pick(l.MaxMetadata, d.MaxMetadata),
		MaxMetadataBytes: pick(l.MaxMetadataBytes, d.MaxMetadataBytes),
	}
}

// ValidateHeader checks the fields every job has. subject, when not nil, is
// the parsed subject the job arrived on; its model and lane must agree.
func ValidateHeader(h *JobHeader, subject *JobSubject, l Limits) *Error {
	l = l.withDefaults()
	if h.ID == "" {
		return Errorf(CodeMissingField, "id", "every job needs an id (letters, digits, '-' and '_', at most 128 bytes)")
	}
	if !ValidToken(h.ID) {
		return Errorf(CodeBadValue, "id", "%q is not a valid id: use letters, digits, '-' and '_', at most 128 bytes", clip(h.ID))
	}
	if h.Model == "" {
		return Errorf(CodeMissingField, "model", "every job names the model that runs it")
	}
	if !ValidToken(h.Model) {
		return Errorf(CodeBadValue, "model", "%q is not a valid model name: use letters, digits, '-' and '_'", clip(h.Model))
	}
	switch h.Lane {
	case "", LaneHigh, LaneNormal:
	default:
		return Errorf(CodeBadValue, "lane", "%q is not a lane: use %q or %q", clip(h.Lane), LaneHigh, LaneNormal)
	}
	if subject != nil {
		if subject.Model != h.Model {
			return Errorf(CodeModelMismatch, "model", "the job names model %q but was published on the subject for model %q", clip(h.Model), subject.Model)
		}
		lane := h.Lane
		if lane == "" {
			lane = LaneNormal
		}
		if subject.Lane != lane {
			return Errorf(CodeBadValue, "lane", "the job names lane %q but was published on the %q lane", lane, subject.Lane)
		}
	}
	if h.ReplyTo != "" && !ValidSubject(h.ReplyTo) {
		return Errorf(CodeBadValue, "reply_to", "%q is not a subject one can publish to (no spaces, no wildcards, at most 256 bytes)", clip(h.ReplyTo))
	}
	if len(h.Metadata) > l.MaxMetadata {
		return Errorf(CodeOverLimit, "metadata", "%d entries, at most %d allowed", len(h.Metadata), l.MaxMetadata)
	}
	for k, v := range h.Metadata {
		if len(k) > l.MaxMetadataBytes || len(v) > l.MaxMetadataBytes {
			return Errorf(CodeOverLimit, "metadata", "entry %q is longer than %d bytes", clip(k), l.MaxMetadataBytes)
		}
	}
	return nil
}

// ValidateChat checks a chat job against the limits. It does not know the
// model's context length: handlers check max_tokens against it.
func ValidateChat(j *ChatJob, subject *JobSubject, l Limits) *Error {
	if err := ValidateHeader(&j.JobHeader, subject, l); err != nil {
		return err
	}
	if subject != nil && subject.Kind != KindChat {
		return Errorf(CodeBadSubject, "", "a chat job was published on a %s subject", subject.Kind)
	}
	l = l.withDefaults()
	if len(j.Messages) == 0 {
		return Errorf(CodeMissingField, "messages", "a chat job needs at least one message")
	}
	if len(j.Messages) > l.MaxMessages {
		return Errorf(CodeOverLimit, "messages", "%d messages, at most %d allowed", len(j.Messages), l.MaxMessages)
	}
	total, images := 0, 0
	for i, m := range j.Messages {
		field := fmt.Sprintf("messages[%d]", i)
		switch m.Role {
		case "system", "user", "assistant":
		case "":
			return Errorf(CodeMissingField, field+".role", "every message needs a role: system, user or assistant")
		default:
			return Errorf(CodeBadValue, field+".role", "%q is not a role: use system, user or assistant", clip(m.Role))
		}
		if len(m.Content) > l.MaxContentBytes {
			return Errorf(CodeOverLimit, field+".content", "%d bytes, at most %d allowed per message", len(m.Content), l.MaxContentBytes)
		}
		if !utf8.ValidString(m.Content) {
			return Errorf(CodeBadValue, field+".content", "content is not valid UTF-8")
		}
		total += len(m.Content)
		for k, img := range m.Images {
			images++
			if len(img) == 0 {
				return Errorf(CodeMissingField, fmt.Sprintf("%s.images[%d]", field, k), "image is empty")
			}
			if len(img) > l.MaxImageBytes {
				return Errorf(CodeOverLimit, fmt.Sprintf("%s.images[%d]", field, k), "%d bytes, at most %d allowed", len(img), l.MaxImageBytes)
			}
		}
	}
	if total > l.MaxPromptBytes {
		return Errorf(CodeOverLimit, "messages", "%d bytes of content in all, at most %d allowed", total, l.MaxPromptBytes)
	}
	if images > l.MaxImages {
		return Errorf(CodeOverLimit, "messages", "%d images in all, at most %d allowed", images, l.MaxImages)
	}
	if j.MaxTokens < 0 || j.MaxTokens > l.MaxTokens {
		return Errorf(CodeOutOfRange, "max_tokens", "%d is outside 0..%d (0 means up to the model's context)", j.MaxTokens, l.MaxTokens)
	}
	if err := inRange("temperature", j.Temperature, 0, 2); err != nil {
		return err
	}
	if err := inRange("top_p", j.TopP, 0, 1); err != nil {
		return err
	}
	if j.TopP != nil && *j.TopP == 0 {
		return Errorf(CodeOutOfRange, "top_p", "0 keeps no token: use a value in (0, 1]")
	}
	if j.TopK < 0 || j.TopK > 1000 {
		return Errorf(CodeOutOfRange, "top_k", "%d is outside 0..1000 (0 means the model's default)", j.TopK)
	}
	if err := inRange("repetition_penalty", j.RepetitionPenalty, 0.5, 2); err != nil {
		return err
	}
	if len(j.Stop) > l.MaxStop {
		return Errorf(CodeOverLimit, "stop", "%d stop strings, at most %d allowed", len(j.Stop), l.MaxStop)
	}
	for i, s := range j.Stop {
		if s == "" {
			return Errorf(CodeBadValue, fmt.Sprintf("stop[%d]", i), "a stop string cannot be empty")
		}
		if len(s) > l.MaxStopBytes {
			return Errorf(CodeOverLimit, fmt.Sprintf("stop[%d]", i), "%d bytes, at most %d allowed", len(s), l.MaxStopBytes)
		}
	}
	return nil
}

// MaxImageSide bounds an image job's width and height; handlers refuse
// any size their package does not make.
const MaxImageSide = 8192

// ValidateImage checks an image job against the limits. Handlers check
// steps, strength, width and height against what their package supports
// and decode the init image.
func ValidateImage(j *ImageJob, subject *JobSubject, l Limits) *Error {
	if err := ValidateHeader(&j.JobHeader, subject, l); err != nil {
		return err
	}
	if subject != nil && subject.Kind != KindImage {
		return Errorf(CodeBadSubject, "", "an image job was published on a %s subject", subject.Kind)
	}
	l = l.withDefaults()
	if strings.TrimSpace(j.Prompt) == "" && len(j.InitImage) == 0 {
		return Errorf(CodeMissingField, "prompt", "an image job needs a prompt")
	}
	if !utf8.ValidString(j.Prompt) {
		return Errorf(CodeBadValue, "prompt", "prompt is not valid UTF-8")
	}
	if n := utf8.RuneCountInString(j.Prompt); n > l.MaxPromptChars {
		return Errorf(CodeOverLimit, "prompt", "%d characters, at most %d allowed", n, l.MaxPromptChars)
	}
	if j.Steps < 0 || j.Steps > l.MaxSteps {
		return Errorf(CodeOutOfRange, "steps", "%d is outside 0..%d (0 means the model's default)", j.Steps, l.MaxSteps)
	}
	if len(j.InitImage) > l.MaxImageBytes {
		return Errorf(CodeOverLimit, "init_image", "%d bytes, at most %d allowed", len(j.InitImage), l.MaxImageBytes)
	}
	if j.Strength < 0 || j.Strength > 1 {
		return Errorf(CodeOutOfRange, "strength", "%g is outside 0..1", j.Strength)
	}
	for _, f := range []struct {
		name string
		v    int
	}{{"width", j.Width}, {"height", j.Height}} {
		if f.v < 0 || f.v > MaxImageSide {
			return Errorf(CodeOutOfRange, f.name, "%d is outside 0..%d (0 means the model's size)", f.v, MaxImageSide)
		}
	}
	if j.Strength > 0 && len(j.InitImage) == 0 {
		return Errorf(CodeMissingField, "init_image", "strength is set but there is no init image")
	}
	switch j.Format {
	case "", "png":
	default:
		return Errorf(CodeBadValue, "format", "%q is not supported: use \"png\"", clip(j.Format))
	}
	return nil
}

// Expired reports whether the job's deadline has passed at now.
func (h *JobHeader) Expired(now time.Time) bool {
	return h.Deadline != nil && !h.Deadline.IsZero() && !now.Before(*h.Deadline)
}

func inRange(field string, v *float64, lo, hi float64) *Error {
	if v == nil {
		return nil
	}
	if !(*v >= lo && *v <= hi) { // also catches NaN
		return Errorf(CodeOutOfRange, field, "%g is outside %g..%g", *v, lo, hi)
	}
	return nil
}

// clip shortens s for an error message.
func clip(s string) string {
	if len(s) <= 40 {
		return s
	}
	return s[:37] + "..."
}
