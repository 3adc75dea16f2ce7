/*
 * ws4redis.js: the browser side of ws4redis, without jQuery.
 *
 *   var ws = WS4Redis({
 *       uri: '{{ WEBSOCKET_URI }}chat?subscribe-broadcast&publish-broadcast',
 *       connecting: function (attempt) {},     // before every connection attempt
 *       connected: function () {},              // the socket is open
 *       receive_message: function (data) {},    // a string, or an ArrayBuffer / Blob for binary frames
 *       disconnected: function (evt) {},        // the socket closed; a reconnect is scheduled
 *       reconnecting: function (delay, attempt) {}, // that reconnect, in delay ms (attempt 2, 3, ...)
 *       heartbeat_msg: {{ WS4REDIS_HEARTBEAT }}, // null, or the server's heartbeat string
 *       token: null,                            // or function () { return a token or a Promise of one }
 *       history: false,                         // true: resume after a reconnect (WS4REDIS_HISTORY)
 *       recovered: function (complete, evt) {}  // with history, after each reconnect
 *   });
 *   ws.send_message('hello');   // true when handed to the socket, false while disconnected
 *   ws.close();                 // close for good: no more reconnects
 *
 * The option names are those of django-websocket-redis 0.6.0, so its pages keep
 * working. Why it behaves as it does:
 *  - A dropped connection is retried with exponential backoff, capped and
 *    jittered, so a restarted server is not hit by every browser at the same
 *    instant, and a server that stays down is not hammered.
 *  - The backoff only resets once a connection stayed up for a while: a server
 *    that accepts and immediately drops would otherwise be retried in a tight loop.
 *  - A connection through a dead proxy or a suspended laptop can look open for
 *    minutes. With heartbeat_msg set, the client sends it every
 *    heartbeat_interval ms; any frame from the server proves the connection
 *    alive, and after max_missed_heartbeats silent intervals the socket is
 *    dropped and a reconnect scheduled. Heartbeat frames never reach
 *    receive_message.
 *  - Binary frames arrive as ArrayBuffer by default (binary_type 'arraybuffer');
 *    pass binary_type: 'blob' to get Blob objects instead.
 *  - With token (a function), a fresh token is asked for before every attempt and
 *    sent as the query parameter 'token' (ws4redis.tokens): tokens are short-lived,
 *    and a reconnect hours later must not present an expired one. A token function
 *    that throws or rejects counts as a failed attempt and is retried with backoff.
 *  - With history (the facility must keep one: WS4REDIS_HISTORY), the client asks
 *    for messages in envelopes that carry each channel's offset, remembers the
 *    newest offset of every channel, and reconnects with them ('since'): the
 *    server first sends what was published while the client was away, in order,
 *    then the live messages, none twice. recovered(complete, evt) follows every
 *    reconnect: complete is false when the history no longer held everything
 *    (trimmed or expired), and the page should fetch its state again.
 *    receive_message still gets the bare message (binary ones as ArrayBuffer or
 *    Blob), with {channel, offset} as a second argument. get_offsets() returns the
 *    offsets, and the option since takes them back (after a page reload, say).
 */
(function (root) {
    'use strict';

    var CONNECTING = 0, OPEN = 1;
    var CLOSE_NORMAL = 1000, CLOSE_ABNORMAL = 1006;

    var DEFAULTS = {
        uri: null,
        connecting: null,
        connected: null,
        receive_message: null,
        disconnected: null,
        reconnecting: null,
        heartbeat_msg: null,
        heartbeat_interval: 5000,
        max_missed_heartbeats: 3,
        binary_type: 'arraybuffer',
        token: null,
        history: false,
        since: null,
        recovered: null,
        reconnect: true,
        reconnect_base_delay: 500,
        reconnect_max_delay: 30000,
        stable_after: 5000,
        debug: false
    };

    /*
     * Delay in ms before reconnect attempt number `attempt` (1, 2, ...):
     * base * 2^(attempt-1), capped at max_delay, then "equal jitter" picks a
     * value in [delay/2, delay] so clients spread out but never retry instantly.
     */
    function reconnectDelay(attempt, base, maxDelay, random) {
        var rnd = typeof random === 'function' ? random : Math.random;
        var exponent = Math.min(Math.max(attempt, 1) - 1, 30);
        var delay = Math.min(maxDelay, base * Math.pow(2, exponent));
        return delay / 2 + rnd() * delay / 2;
    }

    /* Stream offsets ('<ms>-<seq>') compare as number pairs, not as strings. */
    function compareOffsets(a, b) {
        var x = String(a).split('-'), y = String(b).split('-');
        return (Number(x[0]) - Number(y[0])) || (Number(x[1]) - Number(y[1]));
    }

    function base64ToBytes(text) {
        var raw = root.atob(text), bytes = new Uint8Array(raw.length);
        for (var i = 0; i < raw.length; i++) {
            bytes[i] = raw.charCodeAt(i);
        }
        return bytes;
    }

    function merge(defaults, options) {
        var result = {}, key;
        for (key in defaults) {
            if (Object.prototype.hasOwnProperty.call(defaults, key)) {
                result[key] = defaults[key];
            }
        }
        for (key in options) {
            if (Object.prototype.hasOwnProperty.call(options, key)) {
                result[key] = options[key];
            }
        }
        return result;
    }

    function WS4Redis(options) {
        if (!(this instanceof WS4Redis)) {
            return new WS4Redis(options);
        }
        if (!options || !options.uri) {
            throw new Error('WS4Redis: the option "uri" is required (for instance "{{ WEBSOCKET_URI }}facility?subscribe-broadcast")');
        }
        if (options.binary_type && options.binary_type !== 'arraybuffer' && options.binary_type !== 'blob') {
            throw new Error('WS4Redis: binary_type must be "arraybuffer" or "blob", not "' + options.binary_type + '"');
        }
        if (options.token !== undefined && options.token !== null && typeof options.token !== 'function') {
            throw new Error('WS4Redis: token must be a function returning a token (or a Promise of one)');
        }
        if (options.since !== undefined && options.since !== null && typeof options.since !== 'object') {
            throw new Error('WS4Redis: since must be an object of channel -> offset, as get_offsets() returns');
        }

        var self = this;
        var opts = merge(DEFAULTS, options);
        var ws = null;
        var attempts = 0;
        var openedAt = 0;
        var reconnectTimer = null;
        var heartbeatTimer = null;
        var missedHeartbeats = 0;
        var closedByUser = false;
        var offsets = {};  // channel -> newest offset seen (history)
        var resuming = false;  // offsets came from a server: the next attempt asks for what it missed
        if (opts.since) {
            for (var label in opts.since) {
                if (Object.prototype.hasOwnProperty.call(opts.since, label)) {
                    offsets[label] = String(opts.since[label]);
                    resuming = true;
                }
            }
        }

        function log(text) {
            if (opts.debug && root.console) {
                root.console.log('WS4Redis: ' + text);
            }
        }

        function call(name) {
            var callback = opts[name];
            if (typeof callback === 'function') {
                return callback.apply(self, Array.prototype.slice.call(arguments, 1));
            }
            return undefined;
        }

        function withParameter(uri, parameter) {
            return uri + (uri.indexOf('?') < 0 ? '?' : '&') + parameter;
        }

        /* The uri of the next attempt: with history, the offsets to resume from. */
        function attemptUri() {
            var uri = opts.uri;
            if (opts.history) {
                if (!/[?&]history(&|=|$)/.test(uri)) {
                    uri = withParameter(uri, 'history');
                }
                if (resuming) {
                    uri = withParameter(uri, 'since=' + encodeURIComponent(JSON.stringify(offsets)));
                }
            }
            return uri;
        }

        function advance(label, offset) {
            if (offset && (!offsets[label] || compareOffsets(offset, offsets[label]) > 0)) {
                offsets[label] = offset;
            }
            resuming = true;
        }

        function connect() {
            reconnectTimer = null;
            call('connecting', attempts + 1);
            var uri = attemptUri();
            log('connecting to ' + uri);  // never with the token: it is a credential
            if (typeof opts.token !== 'function') {
                open(uri);
                return;
            }
            var pending;
            try {
                pending = opts.token();
            } catch (err) {
                noToken(err);
                return;
            }
            root.Promise.resolve(pending).then(function (token) {
                if (!closedByUser) {
                    open(withParameter(uri, 'token=' + encodeURIComponent(token)));
                }
            }, noToken);
        }

        function noToken(err) {
            log('no token for this attempt: ' + err);
            afterClose({code: CLOSE_ABNORMAL, reason: 'no token', wasClean: false});
        }

        function open(uri) {
            // A malformed uri throws here, synchronously, for the first attempt:
            // the caller sees the SyntaxError instead of a silent retry loop.
            ws = new root.WebSocket(uri);
            ws.binaryType = opts.binary_type;
            ws.onopen = onOpen;
            ws.onmessage = onMessage;
            ws.onclose = onClose;
            ws.onerror = onError;
        }

        function detach(socket) {
            socket.onopen = socket.onmessage = socket.onclose = socket.onerror = null;
        }

        function startHeartbeat() {
            stopHeartbeat();
            if (opts.heartbeat_msg === null || opts.heartbeat_msg === undefined) {
                return;
            }
            missedHeartbeats = 0;
            heartbeatTimer = root.setInterval(sendHeartbeat, opts.heartbeat_interval);
        }

        function stopHeartbeat() {
            if (heartbeatTimer !== null) {
                root.clearInterval(heartbeatTimer);
                heartbeatTimer = null;
            }
        }

        function sendHeartbeat() {
            missedHeartbeats += 1;
            if (missedHeartbeats > opts.max_missed_heartbeats) {
                log('no reply to ' + opts.max_missed_heartbeats + ' heartbeats, dropping the connection');
                drop('missed heartbeats');
                return;
            }
            if (ws && ws.readyState === OPEN) {
                ws.send(opts.heartbeat_msg);
            }
        }

        /* Give up on a socket that looks open but is dead, and schedule a reconnect. */
        function drop(reason) {
            var socket = ws;
            ws = null;
            stopHeartbeat();
            if (socket) {
                detach(socket);
                socket.close(4000, reason);
            }
            afterClose({type: 'close', code: CLOSE_ABNORMAL, reason: reason, wasClean: false});
        }

        function onOpen() {
            openedAt = Date.now();
            log('connected');
            startHeartbeat();
            call('connected');
        }

        function onMessage(evt) {
            missedHeartbeats = 0;
            if (opts.heartbeat_msg !== null && evt.data === opts.heartbeat_msg) {
                return;
            }
            if (opts.history && typeof evt.data === 'string') {
                onEnvelope(evt.data);
                return;
            }
            call('receive_message', evt.data);
        }

        /* A history envelope: a message with its offset, or where the channels stand. */
        function onEnvelope(text) {
            var envelope;
            try {
                envelope = JSON.parse(text);
            } catch (err) {
                log('not a history envelope, passed on as it is: ' + err);
                call('receive_message', text);
                return;
            }
            var label;
            if (envelope.event === 'message') {
                advance(envelope.channel, envelope.offset);
                var data = envelope.data;
                if (envelope.binary) {
                    var bytes = base64ToBytes(data);
                    data = opts.binary_type === 'blob' ? new root.Blob([bytes]) : bytes.buffer;
                }
                call('receive_message', data, {channel: envelope.channel, offset: envelope.offset});
            } else if (envelope.event === 'position' || envelope.event === 'recovery') {
                for (label in envelope.offsets) {
                    if (Object.prototype.hasOwnProperty.call(envelope.offsets, label)) {
                        advance(label, envelope.offsets[label]);
                    }
                }
                if (envelope.event === 'recovery') {
                    log('recovered ' + envelope.missed + ' messages' + (envelope.recovered ? '' : ', history incomplete'));
                    call('recovered', envelope.recovered, envelope);
                }
            }
        }

        function onError() {
            log('websocket error on ' + opts.uri);
        }

        function onClose(evt) {
            if (ws) {
                detach(ws);
                ws = null;
            }
            stopHeartbeat();
            afterClose(evt);
        }

        function afterClose(evt) {
            if (openedAt && Date.now() - openedAt >= opts.stable_after) {
                attempts = 0;
            }
            openedAt = 0;
            log('disconnected (code ' + evt.code + ')');
            call('disconnected', evt);
            if (closedByUser || !opts.reconnect || reconnectTimer !== null) {
                return;
            }
            attempts += 1;
            var delay = reconnectDelay(attempts, opts.reconnect_base_delay, opts.reconnect_max_delay);
            log('reconnecting in ' + Math.round(delay) + ' ms');
            reconnectTimer = root.setTimeout(connect, delay);
            call('reconnecting', delay, attempts + 1);
        }

        /* Send a text (string) or binary (ArrayBuffer, typed array, Blob) message. */
        this.send_message = function (message) {
            if (!ws || ws.readyState !== OPEN) {
                return false;
            }
            ws.send(message);
            return true;
        };

        /* Close the connection for good: no reconnect follows. */
        this.close = function (code, reason) {
            closedByUser = true;
            stopHeartbeat();
            if (reconnectTimer !== null) {
                root.clearTimeout(reconnectTimer);
                reconnectTimer = null;
            }
            if (ws && (ws.readyState === CONNECTING || ws.readyState === OPEN)) {
                ws.close(code || CLOSE_NORMAL, reason || '');
            }
        };

        /* The WebSocket readyState (0 connecting, 1 open, 2 closing, 3 closed), as in 0.6.0. */
        this.get_state = function () {
            return ws ? ws.readyState : 3;
        };

        /* The newest offset of every channel (history): keep them to pass as since later. */
        this.get_offsets = function () {
            return merge({}, offsets);
        };

        /* Whether a message handed to send_message now would go out. */
        this.is_connected = function () {
            return !!ws && ws.readyState === OPEN;
        };

        connect();
    }

    WS4Redis.reconnect_delay = reconnectDelay;
    WS4Redis.defaults = DEFAULTS;

    root.WS4Redis = WS4Redis;
    if (typeof module === 'object' && module && module.exports) {
        module.exports = WS4Redis;
    }
}(typeof window !== 'undefined' ? window : this));
