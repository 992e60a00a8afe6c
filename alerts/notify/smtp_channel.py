"""E-mail over SMTP: stdlib smtplib in a worker thread, plain text, UTF-8."""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from alerts.notify.config import ChannelConfig
from alerts.notify.errors import DeliveryError
from alerts.notify.render import Message, email_subject


def build_email(cfg: ChannelConfig, msg: Message, notification_id: int) -> EmailMessage:
    """The mail for one notification; recipients are the channel's `to` plus the members'."""
    em = EmailMessage()
    rcpts = list(dict.fromkeys([*cfg.to, *msg.emails]))
    em["From"] = cfg.from_addr or ""
    em["To"] = ", ".join(rcpts)
    em["Subject"] = email_subject(msg)
    em["Date"] = formatdate(localtime=False)
    em["Message-ID"] = make_msgid("healthmon")
    em["X-Healthmon-Notification"] = str(notification_id)
    em.set_content(msg.text, charset="utf-8")
    return em


class SmtpChannel:
    """Sends one mail per notification; an SMTP 4xx reply or a lost connection is retried."""

    def __init__(self, cfg: ChannelConfig, *, timeout_s: float) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self._timeout_s = timeout_s

    def _send_blocking(self, em: EmailMessage) -> int:
        cfg = self.cfg
        assert cfg.host is not None  # checked by ChannelConfig
        port = cfg.port or (465 if cfg.ssl else 25)
        smtp: smtplib.SMTP
        if cfg.ssl:
            smtp = smtplib.SMTP_SSL(
                cfg.host, port, timeout=self._timeout_s, context=ssl.create_default_context()
            )
        else:
            smtp = smtplib.SMTP(cfg.host, port, timeout=self._timeout_s)
        with smtp:
            if cfg.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if cfg.username and cfg.password:
                smtp.login(cfg.username, cfg.password)
            refused = smtp.send_message(em)
        if refused:
            raise smtplib.SMTPRecipientsRefused(refused)
        return 250

    async def send(self, msg: Message, notification_id: int) -> int:
        em = build_email(self.cfg, msg, notification_id)
        if not em["To"]:
            raise DeliveryError(
                self.id, "no recipients (channel `to` and member e-mails empty)", retryable=False
            )
        try:
            return await asyncio.to_thread(self._send_blocking, em)
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(
                self.id,
                f"SMTP {exc.smtp_code}: {exc.smtp_error!r}",
                status_code=exc.smtp_code,
                retryable=400 <= exc.smtp_code < 500,
            ) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(
                self.id, f"recipients refused: {exc.recipients}", retryable=False
            ) from exc
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(self.id, f"{type(exc).__name__}: {exc}") from exc

    async def aclose(self) -> None:
        """Nothing is kept open between mails."""
