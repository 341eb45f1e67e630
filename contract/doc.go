// Package contract is presenced's wire contract, the one definition that
// the server (bus, worker, the query service) and the Go client share: the
// subjects, the event, request, reply and query types with their JSON
// codecs, the typed status and reason values, the user-id rules and the
// dedupe of id lists. It imports only the standard library, so a client
// that imports it pulls in nothing of the server.
package contract
