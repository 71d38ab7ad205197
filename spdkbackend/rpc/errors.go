package rpc

import "fmt"

// Error is an error answer from SPDK: its JSON-RPC code and message, and the
// method that was called.
type Error struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Method  string `json:"-"`
}

func (e *Error) Error() string {
	if e.Method == "" {
		return fmt.Sprintf("spdk: %s (code %d)", e.Message, e.Code)
	}
	return fmt.Sprintf("spdk %s: %s (code %d)", e.Method, e.Message, e.Code)
}

// Is matches target when it is an *Error whose non-zero Code and non-empty
// Message equal e's: the sentinels below leave out what varies.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok || (t.Code == 0 && t.Message == "") {
		return false
	}
	return (t.Code == 0 || t.Code == e.Code) && (t.Message == "" || t.Message == e.Message)
}

// JSON-RPC 2.0's codes, and SPDK's for a method called in the wrong phase
// (SPDK_JSONRPC_ERROR_INVALID_STATE). Other codes are negative errnos.
const (
	CodeParseError     = -32700
	CodeInvalidRequest = -32600
	CodeMethodNotFound = -32601
	CodeInvalidParams  = -32602
	CodeInternalError  = -32603
	CodeInvalidState   = -1
)

// Sentinels for errors.Is. SPDK words an errno with strerror, under the
// errno's code (bdev methods) or under CodeInvalidParams (vhost methods), so
// the errno ones match on the message alone.
var (
	// ErrNoSuchDevice: no bdev or vhost controller by that name (ENODEV).
	ErrNoSuchDevice = &Error{Message: "No such device"}
	// ErrExists: a bdev or controller by that name exists already (EEXIST).
	ErrExists = &Error{Message: "File exists"}
	// ErrNotInitialized: a runtime method called on a target started with
	// --wait-for-rpc before framework_start_init.
	ErrNotInitialized = &Error{Code: CodeInvalidState,
		Message: "Method may only be called after framework is initialized using framework_start_init RPC."}
	// ErrAlreadyInitialized: a start-up method (framework_start_init among
	// them) called after the framework was initialised.
	ErrAlreadyInitialized = &Error{Code: CodeInvalidState,
		Message: "Method may only be called before framework is initialized. Use --wait-for-rpc command line parameter and then issue this RPC before the framework_start_init RPC."}
	// ErrMethodNotFound: the target does not have the method (a module not
	// built in, or another SPDK version).
	ErrMethodNotFound = &Error{Code: CodeMethodNotFound}
)
